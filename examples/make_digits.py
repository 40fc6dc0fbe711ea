"""Write examples/digits.npz: scikit-learn's bundled 8x8 digits (no download) as arrays.

``x``: uint8 (1797, 8, 8), pixel values 0..16; ``y``: int64 (1797,), the digit.
Run: python examples/make_digits.py
"""

from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits

digits = load_digits()
out = Path(__file__).with_name("digits.npz")
np.savez_compressed(out, x=digits.images.astype(np.uint8), y=digits.target.astype(np.int64))
print(f"wrote {out} ({out.stat().st_size} bytes)")
