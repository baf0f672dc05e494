"""The HTTP layer (aiohttp only here): one module per protocol, composed in `app`.

Nothing below this package imports it; `predictor.cli` starts it.
"""
