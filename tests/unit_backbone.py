"""The backbone the unit tests run: lite0's real ImageNet weights, fed 64 px images.

64 px is the size of the tests' prepared images. A forward and backward pass costs about a
twelfth of lite0's own 224 px and runs the same code, so the fine-tuning tests keep their
meaning at a fraction of the time. The pipeline tests (test_pipeline_dvc) run the committed
params, 224 px included.
"""

from __future__ import annotations

from imgpipe.params import BackboneParams

UNIT_INPUT_SIZE = 64
LITE0 = BackboneParams("efficientnet_lite0", True, None, input_size=UNIT_INPUT_SIZE)
