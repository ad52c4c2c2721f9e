"""quantplay: `python app.py` serves the playground (a Hugging Face Space runs this file)."""

import os
import sys

if __name__ == "__main__":
    from quantplay import allocator

    allocator.use_preferred()  # jemalloc when the machine has it: re-executes this command once (see allocator.py)

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # nothing phones home unless asked

from quantplay import config  # noqa: E402
from quantplay.errors import ConfigError  # noqa: E402

try:  # before the heavy imports: a malformed setting stops the server at once, not at the first request
    config.use(config.Config.from_env())
except ConfigError as exc:
    print(f"error: {exc}", file=sys.stderr)
    sys.exit(2)

from quantplay import resources  # noqa: E402
from quantplay.hub import download_bars_only  # noqa: E402
from quantplay.ui import build_demo, launch_kwargs  # noqa: E402

download_bars_only()  # no per-load "Loading weights" bars in the server log; download bars stay

resources.size_torch_threads()  # the container's CPUs, not the host's: before the compute thread starts
demo = build_demo()

if __name__ == "__main__":
    demo.launch(**launch_kwargs())
