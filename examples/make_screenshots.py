"""Screenshots of tk_progress.py and qt_progress.py for docs/images/, each with its bar about half full.

A one-off for the docs, not an example of qiotask: run it again when one of those windows changes.

    xvfb-run -a .venv/bin/python examples/make_screenshots.py

Qt draws offscreen and saves its own picture (``QWidget.grab()``).  Tk needs an X display (``DISPLAY``,
Xvfb above) and is grabbed from it with Pillow's ``ImageGrab``, which matplotlib brings (``pip install
'qiotask[bench]'``, or ``pip install pillow``).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ["QT_QPA_PLATFORM"] = "offscreen"  # before Qt is imported

import qt_progress  # examples/ is sys.path[0] when this script runs
import tk_progress

import qiotask

IMAGES = Path(__file__).resolve().parent.parent / "docs" / "images"
HALF = 50  # of the examples' 100 steps


def run_until(context: qiotask.MainContext, predicate: Callable[[], bool]) -> None:
    """Run the context's loop until ``predicate()`` holds (checked every 5 ms), at most 10 s."""
    loop = qiotask.MainLoop(context)
    deadline = time.monotonic() + 10

    def check() -> bool:
        if predicate() or time.monotonic() > deadline:
            loop.quit()
            return False
        return True

    context.timeout_add(5, check)
    loop.run()
    if not predicate():
        raise SystemExit("the bar did not reach half way in 10 s")


def qt_screenshot(path: Path) -> None:
    from PySide6.QtWidgets import QApplication

    app = QApplication(sys.argv[:1])
    window = qt_progress.ProgressWindow(app)
    window.resize(360, 120)
    window.show()
    window.start_button.click()
    run_until(window.context, lambda: window.bar.value() >= HALF)
    if not window.grab().save(str(path)):
        raise SystemExit(f"could not write {path}")
    window.close()  # cancels the job and waits for it


def tk_screenshot(path: Path) -> None:
    import tkinter

    from PIL import ImageGrab

    root = tkinter.Tk()
    window = tk_progress.ProgressWindow(root)
    window.start_button.invoke()
    run_until(window.context, lambda: window.bar["value"] >= HALF)
    root.update()  # draw what the reports changed, before the grab reads the screen
    x, y = root.winfo_rootx(), root.winfo_rooty()
    image = ImageGrab.grab((x, y, x + root.winfo_width(), y + root.winfo_height()), xdisplay=os.environ["DISPLAY"])
    image.save(path)
    window.close()  # cancels the job, waits for it, destroys the window


def main() -> int:
    IMAGES.mkdir(parents=True, exist_ok=True)
    for name, take in (("qt_progress.png", qt_screenshot), ("tk_progress.png", tk_screenshot)):
        take(IMAGES / name)
        print(f"wrote {IMAGES / name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
