// A small interpreter for the Jinja subset that Hugging Face chat templates use, so alem can
// render the template a model ships (GGUF `tokenizer.chat_template`, tokenizer_config.json,
// chat_template.jinja) exactly as transformers' apply_chat_template does: jinja2's sandboxed
// environment with trim_blocks and lstrip_blocks, the loopcontrols extension, HF's tojson,
// raise_exception and strftime_now. No Debian package provides this for C++; docs/chat-templates.md
// lists what is supported and how tests/data/chat_template_reference.json checks it.
//
// A template is parsed once (syntax errors name line and column) and rendered many times; a
// Template is immutable and safe to render from many threads at once. Rendering is bounded:
// output size, work steps, macro depth and value nesting are capped, and error messages never
// quote the data passed in (message text may be confidential).
#pragma once

#include <cstdint>
#include <ctime>
#include <memory>
#include <optional>
#include <string>

#include "model/jinja/value.h"

namespace alem::jinja {

struct Node;

struct RenderOptions {
  size_t max_output_bytes = 64u << 20;  // also the largest string a template may build
  uint64_t max_steps = 50'000'000;      // expressions evaluated + loop iterations + bytes / 64
  int max_macro_depth = 16;
  // The time strftime_now() formats (local time now when unset); tests inject a fixed date.
  std::optional<std::tm> now;
};

class Template {
 public:
  // Parses `source`. Throws alem::Error "chat template: line L, column C: ..." when it cannot.
  explicit Template(const std::string& source);
  ~Template();
  Template(Template&&) noexcept;
  Template& operator=(Template&&) noexcept;

  // Renders with the variables in `context` (messages, add_generation_prompt, bos_token, ...).
  // The result keeps track of which bytes came from data strings in the context. Throws
  // alem::Error "chat template: line L: ..." on a render error, raise_exception(), or a limit.
  Str render(const Dict& context, const RenderOptions& options = {}) const;

 private:
  std::shared_ptr<const std::vector<Node>> body_;
};

}  // namespace alem::jinja
