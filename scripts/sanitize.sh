#!/usr/bin/env bash
# The CPU test suite under AddressSanitizer + UndefinedBehaviorSanitizer (clang; docs/testing.md). Any
# sanitizer report fails its test. Extra arguments go to ctest.
#
# Left out, by name, to fit CI's time (each runs 10-70x slower sanitized; all run unsanitized in
# scripts/test.sh, and smaller tests of the same code run here):
#   EndToEnd.*, Seeds/NatslTinyDefault.*    minutes of training to a learning threshold
#   RoutingSparsity.*                       training runs until a routing target is reached (the controls'
#                                           code runs sanitized in NatslRoutingControls.*)
#   CrashConsistency.*                      dozens of training runs killed and resumed
#   Resume.SigtermAtAnArbitraryMoment...    many training runs; Resume.StopAtStepThenResumeIsBitExact stays
#   NatslLayer.GradcheckAllParameters,      finite differences over every parameter of a layer or model;
#   NatslOps.SparseAttentionGradcheck,      the kernels they reach are checked here by the smaller
#   LayerGradcheck.SoftmaxAttentionVariants, gradchecks and oracle tests of the same families
#   LayerGradcheck.CausalLMLoss,
#   MatmulOp.GradcheckBroadcastBatchWithTransposes
# CUDA tests skip (a CPU-only build).
source "$(dirname "${BASH_SOURCE[0]}")/sanitize_common.sh"
SLOW_TESTS='^(EndToEnd\..*|RoutingSparsity\..*|Seeds/NatslTinyDefault\..*|CrashConsistency\..*|Resume\.SigtermAtAnArbitraryMomentThenResumeIsBitExact|NatslLayer\.GradcheckAllParameters|NatslOps\.SparseAttentionGradcheck|LayerGradcheck\.SoftmaxAttentionVariants|LayerGradcheck\.CausalLMLoss|MatmulOp\.GradcheckBroadcastBatchWithTransposes)$'
configure_and_build_sanitized
say "running the sanitized CPU test suite (without the slow tests named in scripts/sanitize.sh)"
cd "$SAN_BUILD_DIR"
ctest --output-on-failure --timeout 900 -j "$JOBS" -E "$SLOW_TESTS" "$@"
