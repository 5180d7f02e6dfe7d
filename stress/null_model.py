"""The null model: an ONNX graph with MobileNetV2's interface (224x224x3 uint8 pixels in,
1,000 ImageNet probabilities out) that computes nothing: every answer is the same
constant. Served, it leaves only the stack's own work to measure (`make bench
MODEL=null`): HTTP, decoding, queueing, batching, answering."""

import onnx
from onnx import TensorProto, helper

from app.worker import repository
from tools.exporting import IMAGENET_LABELS

SIDE, CLASSES = 224, 1000


def graph():
    """pixels [N, 224, 224, 3] -> probabilities [N, 1000], all 1/1000."""
    pixels = helper.make_tensor_value_info("pixels", TensorProto.UINT8, [None, SIDE, SIDE, 3])
    probabilities = helper.make_tensor_value_info(
        "probabilities", TensorProto.FLOAT, [None, CLASSES]
    )
    nodes = [
        helper.make_node("Shape", ["pixels"], ["batch"], end=1),  # [N]
        helper.make_node("Concat", ["batch", "classes"], ["shape"], axis=0),  # [N, 1000]
        helper.make_node(
            "ConstantOfShape",
            ["shape"],
            ["probabilities"],
            value=helper.make_tensor("p", TensorProto.FLOAT, [1], [1 / CLASSES]),
        ),
    ]
    classes = helper.make_tensor("classes", TensorProto.INT64, [1], [CLASSES])
    model = helper.make_model(
        helper.make_graph(nodes, "null", [pixels], [probabilities], initializer=[classes]),
        opset_imports=[helper.make_opsetid("", 17)],
        ir_version=8,
    )  # what ONNX Runtime reads
    onnx.checker.check_model(model)
    return model


def publish(root, name="null", version=1):
    """Write the null model into the repository ``root``; its folder."""
    path = root / name / str(version)
    path.mkdir(parents=True, exist_ok=True)
    onnx.save(graph(), path / "model.onnx")
    repository.publish(
        path,
        "model.onnx",
        SIDE,
        SIDE,
        3,
        IMAGENET_LABELS.read_text().splitlines(),
        "none",
        runtime="onnx",
    )
    return path
