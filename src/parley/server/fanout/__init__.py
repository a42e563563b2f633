"""Delivery to connected devices: in-process now; a broker (Redis/NATS) carries only
"message available" signals later, with the database as the queue of record."""
