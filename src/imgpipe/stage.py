"""What every stage's `main()` shares: the whole-params check, logging, one-line errors."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

from imgpipe.errors import PipelineError


def run(stage: str, body: Callable[[], None]) -> None:
    """Check the whole params.yaml, then run a stage body; a `PipelineError` becomes one
    line on stderr and exit status 2."""
    # Under torchrun only rank 0 reports progress; the other workers report problems.
    main_process = os.environ.get("RANK", "0") == "0"
    logging.basicConfig(level=logging.INFO if main_process else logging.WARNING,
                        format=f"[{stage}] %(message)s")
    try:
        # Imported here, when the stage runs, and not at the top: the whole-file check
        # is no stage's dependency (imgpipe.params_check says why).
        from imgpipe.params_check import check_params

        check_params()
        body()
    except PipelineError as error:
        print(f"[{stage}] error: {error}", file=sys.stderr)
        sys.exit(2)
