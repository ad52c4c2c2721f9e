"""quantplay: `python app.py` serves the playground (a Hugging Face Space runs this file)."""

import os

if __name__ == "__main__":
    from quantplay import allocator

    allocator.use_preferred()  # jemalloc when the machine has it: re-executes this command once (see allocator.py)

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # nothing phones home unless asked

from transformers.utils import logging as hf_logging  # noqa: E402

from quantplay.ui import build_demo, launch_kwargs  # noqa: E402

hf_logging.disable_progress_bar()  # per-load "Loading weights" bars would drown the server log

demo = build_demo()

if __name__ == "__main__":
    demo.launch(**launch_kwargs())
