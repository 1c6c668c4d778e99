"""The built-in pass library: one module per pass, registered here.

``PASSES`` are the pass classes; ``ALIASES`` map short names to pass names; ``PRESETS`` name pipelines
(their text is parsed with the same registry, so presets may use aliases and other presets). Third-party
packages register their passes the same way, through the entry-point group ``graphopt.passes``.
"""

from passes.eliminate_dead_nodes import EliminateDeadNodes
from passes.eliminate_identity import EliminateIdentity
from passes.fuse_conv_bn import FuseConvBatchNorm
from passes.fuse_gelu import FuseGelu
from passes.fuse_layer_norm import FuseLayerNorm

PASSES = (EliminateDeadNodes, EliminateIdentity, FuseConvBatchNorm, FuseGelu, FuseLayerNorm)

ALIASES = {
    "dce": EliminateDeadNodes.name,
}

PRESETS = {
    "cleanup": "eliminate-identity,eliminate-dead-nodes",
    "fuse": "fuse-conv-bn,fuse-layer-norm,fuse-gelu",
    "lossless": "fixed-point(cleanup,fuse)",
    "all": "lossless",
}
