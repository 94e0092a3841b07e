// Run a detlite AOTInductor package from C++: the detections of one image.
//
//   run_package PACKAGE LIBDETLITE_OPS IMAGE.raw
//
// PACKAGE is what `python -m detlite.export CKPT det.pt2` wrote; LIBDETLITE_OPS the op library
// (`python -m detlite.ops` prints where it is), loaded first because the package calls the
// `detlite::batched_nms` operator; IMAGE.raw the uint8 RGB pixels [3, H, W] of an image already
// fitted to the model input (H x W, see docs/deploy.md), e.g. `tensor.numpy().tofile(...)`.
// Prints the count, then one line per detection: x1 y1 x2 y2 score class, in model pixels.

#include <ATen/ATen.h>
#include <dlfcn.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>

#include <cstdio>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

namespace {

// The first two numbers after "image_size" in the package's metadata (a JSON object).
std::vector<int64_t> image_size(const std::string& json) {
  size_t at = json.find("\"image_size\"");
  at = json.find('[', at);
  int64_t h = std::stoll(json.substr(at + 1));
  int64_t w = std::stoll(json.substr(json.find(',', at) + 1));
  return {h, w};
}

int run(const char* package, const char* image_file);

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: %s PACKAGE LIBDETLITE_OPS IMAGE.raw\n", argv[0]);
    return 2;
  }
  if (dlopen(argv[2], RTLD_NOW | RTLD_GLOBAL) == nullptr) {  // registers the detlite:: ops
    std::fprintf(stderr, "error: cannot load %s: %s\n", argv[2], dlerror());
    return 1;
  }
  try {
    return run(argv[1], argv[3]);
  } catch (const std::exception& error) {  // c10::Error's message ends with a C++ backtrace
    std::string message = error.what();
    std::fprintf(stderr, "error: %s\n", message.substr(0, message.find('\n')).c_str());
    return 1;
  }
}

namespace {

int run(const char* package, const char* image_file) {
  torch::inductor::AOTIModelPackageLoader loader(package);
  std::vector<int64_t> hw = image_size(loader.get_metadata().at("detlite"));

  std::ifstream file(image_file, std::ios::binary);
  std::vector<uint8_t> pixels((std::istreambuf_iterator<char>(file)), {});
  if (static_cast<int64_t>(pixels.size()) != 3 * hw[0] * hw[1]) {
    std::fprintf(stderr, "error: %s holds %zu bytes, not 3 x %lld x %lld\n", image_file,
                 pixels.size(), static_cast<long long>(hw[0]), static_cast<long long>(hw[1]));
    return 1;
  }
  at::Tensor images = at::from_blob(pixels.data(), {1, 3, hw[0], hw[1]}, at::kByte).clone();
  at::Tensor scales = at::ones({1}, at::kFloat);  // boxes in model pixels

  std::vector<at::Tensor> outputs = loader.run({images, scales});
  at::Tensor dets = outputs[0].contiguous();
  int64_t count = outputs[1].item<int64_t>();
  std::printf("%lld\n", static_cast<long long>(count));
  const float* row = dets.data_ptr<float>();
  for (int64_t i = 0; i < count; ++i, row += 6) {
    std::printf("%.4f %.4f %.4f %.4f %.6f %.0f\n", row[0], row[1], row[2], row[3], row[4], row[5]);
  }
  return 0;
}

}  // namespace
