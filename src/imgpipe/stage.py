"""What every stage's `main()` shares: logging set-up and one-line errors."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

from imgpipe.errors import PipelineError


def run(stage: str, body: Callable[[], None]) -> None:
    """Run a stage body; a `PipelineError` becomes one line on stderr and exit status 2."""
    # Under torchrun only rank 0 reports progress; the other workers report problems.
    main_process = os.environ.get("RANK", "0") == "0"
    logging.basicConfig(level=logging.INFO if main_process else logging.WARNING,
                        format=f"[{stage}] %(message)s")
    try:
        body()
    except PipelineError as error:
        print(f"[{stage}] error: {error}", file=sys.stderr)
        sys.exit(2)
