// Optional cross-check against ../shared/reference/gdn_chunk_ref.py (NumPy, float64): with
// NATSL_GDN_DUMP=<file> this test writes one case (inputs, forward outputs, gradients) as text, and
// tests/gdn/check_numpy_ref.py <file> recomputes it with the NumPy reference. Skipped otherwise (not in CI).
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <iomanip>

#include "tests/gdn/gdn_test_util.h"

using namespace natsl;
using namespace natsl::testing::gdn;

TEST(GdnNumpyDump, WritesOneCaseWhenAsked) {
  const char* path = std::getenv("NATSL_GDN_DUMP");
  if (!path) GTEST_SKIP() << "set NATSL_GDN_DUMP=<file> to write the NumPy cross-check case";
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
}
