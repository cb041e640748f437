"""imgpipe: reproducible transfer learning for image classification.

The DVC stages in `src/stages/` are thin; what they share lives here.
"""

__version__ = "0.1.0"
