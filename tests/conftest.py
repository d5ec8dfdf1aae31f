"""Shared test fixtures: the project root on sys.path, the shared data folder, the default model."""
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# ../shared/data beside the checkout (CI clones with shared/ beside it); override with LLMLAB_DATA.
SHARED_DATA = Path(os.environ.get("LLMLAB_DATA", ROOT.parent / "shared" / "data"))


def need_data(*parts):
    """Path under the shared data folder, or skip the test with the reason."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data not found: {path} (set LLMLAB_DATA to the data folder)")
    return path


@pytest.fixture(scope="session")
def default_model_path():
    """Path of the SmolLM2-135M-Instruct GGUF installed by setup.sh, or skip."""
    import weights
    try:
        return weights.default_model_path()
    except FileNotFoundError as err:
        pytest.skip(str(err))


@pytest.fixture(scope="session")
def smol_tokenizer(default_model_path):
    """SmolLM2's tokenizer (byte-level BPE, ChatML) read from the default model's GGUF."""
    import tokenizer
    return tokenizer.Tokenizer.from_file(default_model_path)
