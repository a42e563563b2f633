"""``parley tui``: the terminal app, on Textual.

``app.py`` holds the thin ``ParleyApp`` (the client, its event stream, the alarms);
each concern has its screen: ``chat.py`` (conversation list, chat, compose),
``dialogs.py`` (new chat, new group, attach, save, report), ``safety.py``
(safety number and QR code), ``groups.py`` (members and verification),
``policy.py`` (privacy policy and its diff), ``devices.py`` (linking); the
widgets in ``widgets.py`` only show records and post messages.
"""
