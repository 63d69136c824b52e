// Cross-check against ../shared/reference/gdn_chunk_ref.py (the verified NumPy float64 reference): this test
// writes one case (inputs, forward outputs, gradients) as text and runs tests/gdn/check_numpy_ref.py on it,
// which recomputes everything with the NumPy reference and fails above 1e-12 relative error. Needs python3
// with numpy (Debian python3-numpy, which scripts/test.sh installs); it skips only where NATSL_NUMPY_OPTIONAL is
// set (scripts/gpu_test.sh, for GPU machines where nothing can be installed or ../shared/reference is absent).
// NATSL_GDN_DUMP=<file> keeps the case. The oracle lies outside this repository, in the shared reference folder
// beside the checkout (docs/gdn-algorithm.md §6.1); the algorithm it checks is §3-§4 there.
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <iomanip>

#include "tests/gdn/gdn_test_util.h"

using namespace natsl;
using namespace natsl::testing::gdn;

TEST(GdnNumpyReference, ChunkedKernelsMatchTheNumpyOracle) {
  const char* keep = std::getenv("NATSL_GDN_DUMP");
  const std::string path = keep ? std::string(keep) : std::string(NATSL_BINARY_DIR) + "/gdn_numpy_case.txt";
  GdnCase c{.B = 1, .T = 150, .H = 1, .HV = 1, .K = 5, .V = 4, .h0 = true, .g_min = -0.5, .seed = 41};
  const GdnArgs a = args_of(c);
  const GdnInputs in = make_inputs(c);
  const Tensor dout = natsl::testing::randn(in.v.shape(), 42), dht = natsl::testing::randn(in.h0.shape(), 43);
  const FwdResult f = run_chunk_fwd(a, in);
  const GdnGrads g = run_chunk_bwd(a, in, dout, dht);
  std::ofstream os(path);
  ASSERT_TRUE(os) << "cannot write " << path;
  os << std::setprecision(17) << "T " << c.T << "\nK " << c.K << "\nV " << c.V << "\nscale " << a.scale << "\n";
  auto put = [&](const char* name, const Tensor& t) {
    os << name;
    for (double x : t.to_vector<double>()) os << ' ' << x;
    os << '\n';
  };
  put("q", in.q), put("k", in.k), put("v", in.v), put("g", in.g), put("beta", in.beta), put("h0", in.h0);
  put("dO", dout), put("dht", dht), put("o", f.o), put("ht", f.ht);
  put("dq", g.dq), put("dk", g.dk), put("dv", g.dv), put("dg", g.dg), put("dbeta", g.dbeta), put("dh0", g.dh0);
  os.close();
  // The first interpreter that imports numpy: Debian's python3 with python3-numpy, or the python3 on PATH (a
  // pyenv or a machine's torch install may be one without the other).
  std::string python;
  for (const char* candidate : {"/usr/bin/python3", "python3"})
    if (std::system((std::string(candidate) + " -c 'import numpy' >/dev/null 2>&1").c_str()) == 0) {
      python = candidate;
      break;
    }
  const std::string oracle = std::string(NATSL_SHARED_DIR) + "/reference/gdn_chunk_ref.py";
  const bool have_oracle = std::ifstream(oracle).good();
  // scripts/gpu_test.sh: a GPU machine without numpy or without ../shared/reference
  if ((python.empty() || !have_oracle) && std::getenv("NATSL_NUMPY_OPTIONAL"))
    GTEST_SKIP() << "no python3 with numpy or no " << oracle << " here; this CPU-only cross-check runs in CI";
  ASSERT_TRUE(have_oracle) << oracle << " is missing (the shared reference folder beside the checkout)";
  ASSERT_FALSE(python.empty()) << "no python3 with numpy (tried /usr/bin/python3 and python3 on PATH); install "
                                  "python3-numpy (scripts/test.sh does)";
  const std::string cmd = python + " " + std::string(NATSL_SOURCE_DIR) + "/tests/gdn/check_numpy_ref.py " + path;
  EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd << " failed (python3-numpy missing, or a mismatch: see its output)";
}
