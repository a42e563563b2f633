"""HTTP and websocket routes: parse, authenticate, call a handler, render. No SQL, no policy."""
