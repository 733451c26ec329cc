"""The network is the notebook's LeNet-5."""

from conftest import compose_cfg
from lenet_sweep.model import build_lenet, shape_table


def test_default_model_is_the_notebook_lenet():
    model = build_lenet(compose_cfg().model)
    assert model.count_params() == 44426
    assert [shape for _, shape, _ in shape_table(model)] == [
        (1, 24, 24, 6), (1, 12, 12, 6), (1, 8, 8, 16), (1, 4, 4, 16), (1, 256), (1, 120), (1, 84), (1, 10)]
    assert {layer.activation.__name__ for layer in model.layers if hasattr(layer, "activation")} == {"sigmoid"}


def test_activation_and_widths_come_from_config():
    model = build_lenet(compose_cfg(["model.activation=relu", "model.dense_units=[64]",
                                     "model.output_activation=softmax"]).model)
    acts = [layer.activation.__name__ for layer in model.layers if hasattr(layer, "activation")]
    assert acts == ["relu", "relu", "relu", "softmax"]
    assert shape_table(model)[-2][1] == (1, 64)
