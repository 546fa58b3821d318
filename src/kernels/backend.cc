// The backend registry: the one place that maps a backend name ("reference", "cpu", "cuda") to
// an implementation, so engine code picks kernels by a configuration string and never names a
// concrete backend class. The CUDA entry exists only in builds made with CUDA.
#include "kernels/backend.h"

#include "core/error.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/reference_backend.h"
#ifdef ALEM_HAVE_CUDA
#include "kernels/cuda/cuda_backend.h"
#endif

namespace alem {

std::unique_ptr<KernelBackend> make_backend(const std::string& name) {
  if (name == "reference") return std::make_unique<ReferenceBackend>();
  if (name == "cpu") return make_cpu_backend();
#ifdef ALEM_HAVE_CUDA
  if (name == "cuda") return make_cuda_backend();
#endif
  std::string known;
  for (const std::string& n : available_backends()) known += (known.empty() ? "" : ", ") + n;
  ALEM_FAIL("unknown kernel backend '" + name + "' (available: " + known + ")");
}

std::vector<std::string> available_backends() {
  std::vector<std::string> names = {"reference", "cpu"};
#ifdef ALEM_HAVE_CUDA
  names.push_back("cuda");
#endif
  return names;
}

}  // namespace alem
