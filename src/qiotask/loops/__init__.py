"""Loop adapters, one module per event loop, each imported only when used.

- :mod:`qiotask.loops.asyncio`: asyncio loops (uvloop's too) and the
  embedded default context.
- :mod:`qiotask.loops.glib`: a ``GLib.MainContext`` (PyGObject).
- :mod:`qiotask.loops.qt`: the thread of a Qt ``QCoreApplication`` (PySide6).
- :mod:`qiotask.loops.tk`: a ``tkinter.Tk`` root.
- :mod:`qiotask.loops.trio`: a trio run.

``qiotask.attach(obj)`` picks the adapter from the object's type and imports
it; importing qiotask imports none of the toolkits.
"""
