"""Loop adapters, one module per event loop, each imported only when used.

- :mod:`qiotask.loops.asyncio`: asyncio loops and the embedded default context.
"""
