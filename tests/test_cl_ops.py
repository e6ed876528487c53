"""OpenCL launchers vs the numpy reference (outputs and gradients wiped to NaN before launch)."""
import numpy as np
import pytest

from clcheck import cl_check, needs_cl

pytestmark = needs_cl


@pytest.mark.parametrize("shape", [(1,), (2, 3), (2, 3, 5, 5), (1, 1, 1, 1), (3, 1000)])
def test_relu(shape):
    x = np.random.default_rng(0).standard_normal(shape)
    cl_check("Relu", {}, [x])
