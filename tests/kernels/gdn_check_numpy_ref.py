"""Compares a case written by GdnNumpyDump (tests/kernels/gdn_test.cpp) with the NumPy float64
reference ../shared/reference/gdn_chunk_ref.py (chunk size 64; outside this repository, beside the checkout:
docs/gdn-algorithm.md §6.1). Run by the GdnNumpyReference test; by hand:

    NATSL_GDN_DUMP=/tmp/gdn_case.txt build/tests/test_kernels --gtest_filter=GdnNumpyReference.*
    /usr/bin/python3 tests/kernels/gdn_check_numpy_ref.py /tmp/gdn_case.txt   # Debian python3-numpy
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', '..', '..', 'shared', 'reference'))
import gdn_chunk_ref as ref  # noqa: E402


def main(path):
    d = {}
    for line in open(path):
        name, *vals = line.split()
        d[name] = np.array([float(x) for x in vals])
    T, K, V, scale = int(d['T'][0]), int(d['K'][0]), int(d['V'][0]), d['scale'][0]
    q, k, v = d['q'].reshape(T, K), d['k'].reshape(T, K), d['v'].reshape(T, V)
    g, beta, h0 = d['g'], d['beta'], d['h0'].reshape(K, V)
    dO, dht = d['dO'].reshape(T, V), d['dht'].reshape(K, V)
    o_r, h_r = ref.recurrent(q, k, v, g, beta, h0, scale)
    _, _, cache = ref.chunk_fwd(q, k, v, g, beta, h0, scale, 64)
    grads = ref.chunk_bwd(q, k, v, g, beta, h0, scale, dO, dht, cache, 64)
    ok = True
    pairs = [('o', o_r), ('ht', h_r)] + list(zip(['dq', 'dk', 'dv', 'dg', 'dbeta', 'dh0'], grads))
    for name, want in pairs:
        got = d[name].reshape(want.shape)
        err = np.linalg.norm(got - want) / np.linalg.norm(want)
        ok &= err < 1e-12
        print('%-6s rel err %.2e' % (name, err))
    print('PASS' if ok else 'FAIL')
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main(sys.argv[1]))
