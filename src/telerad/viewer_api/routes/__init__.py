"""Routers, one per resource family."""
