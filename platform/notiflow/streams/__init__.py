"""The Redis adapter: every Redis command notiflow sends lives in this package."""
