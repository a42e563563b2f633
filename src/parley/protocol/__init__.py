"""Parley's sans-I/O protocol core.

No sockets, files, clocks or global randomness live here: randomness is a
``parley.crypto.random.Random`` argument and time is an integer argument, so
every function can be replayed from a transcript.

Modules: ``codec`` (strict binary reader/writer), ``wire`` (envelopes and
payloads), ``keys`` (identity and prekeys), ``pqxdh`` (session set-up),
``ratchet`` (Double Ratchet), ``session`` (1:1 sessions with franking),
``sender_keys`` (groups), ``franking`` (report commitments), ``fingerprint``
(safety numbers).
"""
