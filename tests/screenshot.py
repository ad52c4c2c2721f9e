"""`make screenshot`: refresh assets/screenshot.png from a real run of the page."""

import sys
from pathlib import Path

from server import compare_in_browser, running_app

if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "assets/screenshot.png").resolve()
    with running_app() as (url, _):
        shown = compare_in_browser(url, "What is the capital of France?", out)
    print(shown["status"])
    print(f"wrote {out}")
