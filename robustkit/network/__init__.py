"""robustkit's network representation: ONNX in, a sequence of flat layers out."""

from robustkit.network.conv import Conv2d
from robustkit.network.layers import Dense, Elementwise, Layer, LinearLayer
from robustkit.network.activations import Activation
from robustkit.network.relu import LeakyReLU, ReLU
from robustkit.network.hardtanh import HardTanh
from robustkit.network.graph_ops import Blocks, Identity, SparseLinear
from robustkit.network.linear_ops import AvgPool2d, Permute, ZeroPad2d
from robustkit.network.smooth import SCurve
from robustkit.network.network import Network, NetworkModule, simplify
from robustkit.network.onnx_loader import SUPPORTED_OPS, load_onnx, network_from_onnx
from robustkit.network.ort import OrtModel

__all__ = [
    "Activation", "AvgPool2d", "Blocks", "Conv2d", "Dense", "Elementwise", "HardTanh", "Identity", "Layer",
    "LeakyReLU", "LinearLayer", "Permute", "ReLU", "SCurve", "SparseLinear", "ZeroPad2d",
    "Network", "NetworkModule", "simplify",
    "SUPPORTED_OPS", "load_onnx", "network_from_onnx", "OrtModel",
]
