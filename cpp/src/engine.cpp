#include "jrtc/engine.h"

#include <filesystem>
#include <sstream>
#include <stdexcept>
#include <unordered_map>

#include <ATen/ATen.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>

namespace jrtc {
namespace {

constexpr const char* kPackage = "model.pt2";  // export/aoti.py PACKAGE

std::vector<std::string> split(const std::string& text, char sep) {
  std::vector<std::string> parts;
  std::stringstream stream(text);
  std::string part;
  while (std::getline(stream, part, sep)) parts.push_back(part);
  return parts;
}

c10::ScalarType dtype_of(const std::string& name) {
  static const std::unordered_map<std::string, c10::ScalarType> dtypes = {
      {"float32", c10::kFloat}, {"bfloat16", c10::kBFloat16}, {"float16", c10::kHalf}};
  auto it = dtypes.find(name);
  if (it == dtypes.end()) throw std::runtime_error("unknown state dtype " + name + " in the package");
  return it->second;
}

std::string field(const std::unordered_map<std::string, std::string>& metadata, const std::string& key) {
  auto it = metadata.find(key);
  if (it == metadata.end()) {
    throw std::runtime_error("the package has no " + key + " metadata: it was not written by jrtc export");
  }
  return it->second;
}

// "name:dtype:d1xd2;..." (export/aoti.py metadata)
std::vector<StateSpec> parse_state(const std::string& text) {
  std::vector<StateSpec> specs;
  for (const auto& entry : split(text, ';')) {
    auto parts = split(entry, ':');
    if (parts.size() != 3) throw std::runtime_error("malformed jrtc.state entry: " + entry);
    StateSpec spec{parts[0], dtype_of(parts[1]), {}};
    for (const auto& dim : split(parts[2], 'x')) spec.shape.push_back(std::stoll(dim));
    specs.push_back(std::move(spec));
  }
  return specs;
}

}  // namespace

Engine::Engine(const std::string& path) {
  std::filesystem::path package(path);
  if (std::filesystem::is_directory(package)) package /= kPackage;
  if (!std::filesystem::is_regular_file(package)) {
    throw std::runtime_error(package.string() + " not found: pass an engine directory written by "
                             "jrtc export --target cuda or --target cpu --format aoti");
  }
  prefill_ = std::make_unique<torch::inductor::AOTIModelPackageLoader>(package.string(), "prefill");
  decode_ = std::make_unique<torch::inductor::AOTIModelPackageLoader>(package.string(), "decode");
  const auto metadata = prefill_->get_metadata();
  state_ = parse_state(field(metadata, "jrtc.state"));
  device_ = c10::Device(field(metadata, "jrtc.device"));
  enc_length_ = std::stoll(field(metadata, "jrtc.enc_length"));
  pad_token_id_ = std::stoll(field(metadata, "jrtc.pad_token_id"));
  eos_token_id_ = std::stoll(field(metadata, "jrtc.eos_token_id"));
  vocab_size_ = std::stoll(field(metadata, "jrtc.vocab_size"));
  max_prompt_len_ = std::stoll(field(metadata, "jrtc.max_prompt_len"));
}

Engine::~Engine() = default;

Sequence Engine::new_sequence() const {
  Sequence seq;
  for (const auto& spec : state_) {
    std::vector<int64_t> shape{1};
    shape.insert(shape.end(), spec.shape.begin(), spec.shape.end());
    seq.state.push_back(at::zeros(shape, at::TensorOptions().dtype(spec.dtype).device(device_)));
  }
  return seq;
}

at::Tensor Engine::run(torch::inductor::AOTIModelPackageLoader& program, Sequence& seq,
                       const std::vector<int64_t>& ids, int64_t num_pad) const {
  auto longs = at::TensorOptions().dtype(c10::kLong);
  std::vector<at::Tensor> inputs{
      at::tensor(ids, longs).view({1, static_cast<int64_t>(ids.size())}).to(device_),
      at::full({1}, seq.position, longs).to(device_),
      at::full({1}, num_pad, longs).to(device_),
  };
  inputs.insert(inputs.end(), seq.state.begin(), seq.state.end());  // updated in place by the program
  auto outputs = program.run(inputs);
  seq.position += static_cast<int64_t>(ids.size());
  return outputs.at(0);
}

at::Tensor Engine::prefill(Sequence& seq, const std::vector<int64_t>& prompt) const {
  if (prompt.empty()) throw std::runtime_error("the prompt is empty");
  for (auto id : prompt) {
    if (id < 0 || id >= vocab_size_) {
      throw std::runtime_error("token id " + std::to_string(id) + " is outside the vocabulary (0.." +
                               std::to_string(vocab_size_ - 1) + ")");
    }
  }
  // The checkpoints were evaluated with short prompts left-padded to the encoder length, pads masked.
  int64_t num_pad = std::max<int64_t>(enc_length_ - static_cast<int64_t>(prompt.size()), 0);
  std::vector<int64_t> ids(num_pad, pad_token_id_);
  ids.insert(ids.end(), prompt.begin(), prompt.end());
  at::Tensor logits;
  for (size_t begin = 0; begin < ids.size(); begin += max_prompt_len_) {
    std::vector<int64_t> chunk(ids.begin() + begin,
                               ids.begin() + std::min(ids.size(), begin + max_prompt_len_));
    // The prefill program takes L >= 2; a one-token chunk is a decode step (its num_pad is 0).
    auto& program = chunk.size() == 1 ? *decode_ : *prefill_;
    logits = run(program, seq, chunk, begin == 0 ? num_pad : 0);
  }
  return logits;
}

at::Tensor Engine::decode(Sequence& seq, int64_t token) const { return run(*decode_, seq, {token}, 0); }

int64_t Engine::argmax(const at::Tensor& logits) const {
  return logits.index({0, at::indexing::Slice(0, vocab_size_)}).argmax().item<int64_t>();
}

std::vector<int64_t> Engine::generate(const std::vector<int64_t>& prompt, int64_t max_new_tokens,
                                      const std::function<void(int64_t)>& on_token) const {
  Sequence seq = new_sequence();
  at::Tensor logits = prefill(seq, prompt);
  std::vector<int64_t> generated;
  while (static_cast<int64_t>(generated.size()) < max_new_tokens) {
    int64_t token = argmax(logits);
    generated.push_back(token);
    if (on_token) on_token(token);
    if (token == eos_token_id_ || static_cast<int64_t>(generated.size()) == max_new_tokens) break;
    logits = decode(seq, token);
  }
  return generated;
}

}  // namespace jrtc
