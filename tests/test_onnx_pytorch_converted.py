"""The onnx package's own pytorch-converted backend tests (onnx/backend/test/data/pytorch-converted/):
every 2-D CNN-style module test imports (after onnx.version_converter to opset 7 where the file is
older) and matches the output PyTorch recorded in test_data_set_0, max|ours - expected| <= 1e-4 *
max|expected|. The folder is parametrized as shipped; what THOMAS genuinely cannot run is in SKIP,
with the reason, and must still fail to import with one clear line (never a traceback)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper, version_converter

from device_agent.backends.numpy import NumpyRef
from device_agent.errors import OnnxError
from device_agent.model.graph import save_package
from onnx_helpers import packages_round_trip  # noqa: F401
from thomas_cli.onnx import import_onnx

DIR = Path(onnx.__file__).parent / "backend" / "test" / "data" / "pytorch-converted"
NAMES = sorted(p.name for p in DIR.iterdir() if (p / "model.onnx").is_file())

_3D = "3-D op on a rank-5 (N,C,D,H,W) input: THOMAS runs 2-D image models only"
_1D = "1-D op on a rank-3 (N,C,L) input: no 1-D convolution / pooling / batch norm on the device"
SKIP = {
    **{n: _3D for n in NAMES if "3d" in n and "PReLU" not in n},         # PReLU on rank 5 is elementwise
    **{n: _1D for n in ("test_Conv1d", "test_Conv1d_dilated", "test_Conv1d_groups", "test_Conv1d_pad1",
                        "test_Conv1d_pad1size1", "test_Conv1d_pad2", "test_Conv1d_pad2size1", "test_Conv1d_stride",
                        "test_MaxPool1d", "test_MaxPool1d_stride", "test_MaxPool1d_stride_padding_dilation",
                        "test_BatchNorm1d_3d_input_eval")},
    "test_ConvTranspose2d": "ConvTranspose: no transposed convolution op on the device",
    "test_ConvTranspose2d_no_bias": "ConvTranspose: no transposed convolution op on the device",
    "test_ELU": "Elu: no device op",
    "test_SELU": "Selu: no device op",
    "test_Softplus": "Softplus: no device op",
    "test_Tanh": "Tanh: no device op",
    "test_Softsign": "Abs (x / (1 + |x|)): no device op",
    "test_PoissonNLLLLoss_no_reduce": "Exp (a loss, not a layer): no device op",
    "test_Embedding": "an int64 index input (a lookup table, not an image model)",
    "test_Embedding_sparse": "an int64 index input (a lookup table, not an image model)",
}


def _load(name: str, dest: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    m = onnx.load(str(DIR / name / "model.onnx"))
    if m.opset_import[0].version < 7:
        m = version_converter.convert_version(m, 7)
    onnx.save(m, str(dest))
    data = DIR / name / "test_data_set_0"
    x, y = (numpy_helper.to_array(onnx.load_tensor(str(data / f"{k}_0.pb"))) for k in ("input", "output"))
    return dest, x, y


def test_the_folder_is_all_there():
    assert len(NAMES) >= 80 and "test_MaxPool2d_stride_padding_dilation" in NAMES
    assert set(SKIP) <= set(NAMES) and len(NAMES) - len(SKIP) >= 40


@pytest.mark.parametrize("name", NAMES)
def test_pytorch_converted(name, tmp_path):
    path, x, want = _load(name, tmp_path / f"{name}.onnx")
    if name in SKIP:      # refused in one line, as `thomas import` prints it (a newly supported op fails
        with pytest.raises(OnnxError) as e:          # here until it leaves SKIP)
            import_onnx(path)
        assert "\n" not in str(e.value)
        pytest.skip(SKIP[name])
    g = import_onnx(path)
    out = NumpyRef(g).forward({g.inputs[0].name: x})[g.outputs[-1]]
    assert out.shape == want.shape
    assert np.max(np.abs(out - want)) <= 1e-4 * max(float(np.max(np.abs(want))), 1e-6), name
    save_package(g, tmp_path / "pkg")
    if "dilation" in name:
        assert g.nodes[0].attrs["dilation"] == [10, 10]           # a 60x80 kernel, dilated 10x

