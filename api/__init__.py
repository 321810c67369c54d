"""The chunkstore HTTP API (Litestar). Handlers parse, call one service method, encode."""
