// jrtc C++ embedding: load an engine directory written by `jrtc export --target cuda` or
// `--target cpu --format aoti` (an AOTInductor package of a prefill and a decode program) and generate
// with it, without Python. The package's metadata says everything this needs (state shapes and dtypes,
// encoder length, pad and end-of-sequence ids), so no JSON is read.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <ATen/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

namespace torch::inductor {
class AOTIModelPackageLoader;
}

namespace jrtc {

// One tensor of a sequence's recurrent state (shape without the batch dimension).
struct StateSpec {
  std::string name;
  c10::ScalarType dtype;
  std::vector<int64_t> shape;
};

// A sequence in progress: its state (updated in place by the programs) and the next token's position.
struct Sequence {
  std::vector<at::Tensor> state;
  int64_t position = 0;
};

class Engine {
 public:
  // `path` is the engine directory or the model.pt2 inside it. Throws std::runtime_error.
  explicit Engine(const std::string& path);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // A fresh sequence: zero state on the engine's device.
  Sequence new_sequence() const;

  // Consumes the whole prompt as the reference does (left-padded with the pad id and masked when it is
  // shorter than the encoder; longer prompts in chunks of max_prompt_len). Returns the logits of its last
  // position, [1, vocab_size_padded].
  at::Tensor prefill(Sequence& seq, const std::vector<int64_t>& prompt) const;

  // One decode step for `token`; returns the logits of the next token.
  at::Tensor decode(Sequence& seq, int64_t token) const;

  // Greedy generation of up to `max_new_tokens` ids, stopping at the end-of-sequence id if the model has
  // one; `on_token` (if set) sees each id as it is produced.
  std::vector<int64_t> generate(const std::vector<int64_t>& prompt, int64_t max_new_tokens,
                                const std::function<void(int64_t)>& on_token = nullptr) const;

  // The id of the likeliest real token (the padded vocabulary rows never win).
  int64_t argmax(const at::Tensor& logits) const;

  int64_t vocab_size() const { return vocab_size_; }
  int64_t enc_length() const { return enc_length_; }
  int64_t eos_token_id() const { return eos_token_id_; }  // -1: none
  const std::vector<StateSpec>& state_spec() const { return state_; }

 private:
  at::Tensor run(torch::inductor::AOTIModelPackageLoader& program, Sequence& seq,
                 const std::vector<int64_t>& ids, int64_t num_pad) const;

  std::unique_ptr<torch::inductor::AOTIModelPackageLoader> prefill_;
  std::unique_ptr<torch::inductor::AOTIModelPackageLoader> decode_;
  std::vector<StateSpec> state_;
  c10::Device device_{c10::kCPU};
  int64_t enc_length_ = 0, pad_token_id_ = 0, eos_token_id_ = -1, vocab_size_ = 0, max_prompt_len_ = 0;
};

}  // namespace jrtc
