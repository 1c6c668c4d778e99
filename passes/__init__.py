"""The built-in pass library: one module per pass, registered here.

``PASSES`` are the pass classes; ``ALIASES`` map short names to pass names; ``PRESETS`` name pipelines
(their text is parsed with the same registry, so presets may use aliases and other presets). Third-party
packages register their passes the same way, through the entry-point group ``graphopt.passes``.
"""

from passes.deduplicate_initializers import DeduplicateInitializers
from passes.eliminate_common_subexpressions import EliminateCommonSubexpressions
from passes.eliminate_dead_nodes import EliminateDeadNodes
from passes.eliminate_identity import EliminateIdentity
from passes.eliminate_no_op_nodes import EliminateNoOpNodes
from passes.fold_constants import FoldConstants
from passes.fuse_conv_bn import FuseConvBatchNorm
from passes.fuse_conv_mul_add import FuseConvMulAdd
from passes.fuse_gelu import FuseGelu
from passes.fuse_layer_norm import FuseLayerNorm
from passes.fuse_matmul_add_into_gemm import FuseMatMulAddIntoGemm
from passes.fuse_pad_into_conv import FusePadIntoConv
from passes.fuse_reshapes import FuseReshapes
from passes.fuse_transposes import FuseTransposes
from passes.prune_channels import PruneChannels
from passes.quantize_qdq import QuantizeQDQ

PASSES = (
    DeduplicateInitializers, EliminateCommonSubexpressions, EliminateDeadNodes, EliminateIdentity,
    EliminateNoOpNodes, FoldConstants, FuseConvBatchNorm, FuseConvMulAdd, FuseGelu, FuseLayerNorm,
    FuseMatMulAddIntoGemm, FusePadIntoConv, FuseReshapes, FuseTransposes, PruneChannels, QuantizeQDQ,
)

ALIASES = {
    "fold": FoldConstants.name,
    "dce": EliminateDeadNodes.name,
    "cse": EliminateCommonSubexpressions.name,
    "prune": PruneChannels.name,
}

PRESETS = {
    "cleanup": "eliminate-identity,eliminate-no-op-nodes,eliminate-common-subexpressions,deduplicate-initializers,"
               "eliminate-dead-nodes",
    "fuse": "fuse-conv-bn,fuse-conv-mul-add,fuse-pad-into-conv,fuse-matmul-add-into-gemm,fuse-transposes,"
            "fuse-reshapes,fuse-layer-norm,fuse-gelu",
    "lossless": "fixed-point(fold,cleanup,fuse)",
    "all": "lossless",
}
