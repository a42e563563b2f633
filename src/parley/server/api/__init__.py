"""HTTP and websocket routes: parse, authenticate, call a handler, render. No SQL, no policy.

The layering rule (STYLE.md; Synapse's rest -> handler -> store):

* A route module imports ``parley.server.handlers`` (and its ``api`` siblings), never
  ``parley.server.storage``. Whatever a route needs from a store, including a read as
  small as "the latest policy" or "this account's notices", is a handler method.
* A record type that a route builds or renders (``Staff``, ``DeviceBundle``, the key
  records, ``QueuedMessage``...) reaches it through the handler module that takes or
  returns it: that module lists the type in its ``__all__`` (an explicit re-export, so
  mypy's strict no-implicit-reexport accepts it) and the route imports it from there.
  The store module stays the one definition; nothing is copied.
* Only ``parley.server.app`` (the composition root) builds stores and hands them to
  handlers; routers are given handlers.

``tests/server/test_layering.py`` checks the first rule on the source of every module
here, websocket included (and that the fan-out never imports a handler).
"""
