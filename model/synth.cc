#include "model/synth.h"

#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "common/thread_pool.h"
#include "model/safetensors.h"
#include "nlohmann/json.hpp"

namespace shardserve {
namespace {

ModelConfig Llama(int64_t hidden, int64_t inter, int64_t layers, int64_t heads, int64_t kv_heads,
                  int64_t vocab, int64_t context) {
  ModelConfig c;
  c.architecture = Architecture::kLlama;
  c.model_type = "llama";
  c.hidden_size = hidden;
  c.intermediate_size = inter;
  c.num_layers = layers;
  c.num_heads = heads;
  c.num_kv_heads = kv_heads;
  c.head_dim = hidden / heads;
  c.vocab_size = vocab;
  c.max_position_embeddings = context;
  c.rms_norm_eps = 1e-5;
  c.rope_theta = 10000.0;
  c.bos_token_id = 1;
  c.eos_token_ids = {2};
  return c;
}

ModelConfig Qwen2(int64_t hidden, int64_t inter, int64_t layers, int64_t heads, int64_t kv_heads,
                  int64_t vocab, int64_t context) {
  ModelConfig c = Llama(hidden, inter, layers, heads, kv_heads, vocab, context);
  c.architecture = Architecture::kQwen2;
  c.model_type = "qwen2";
  c.qkv_bias = true;
  c.rms_norm_eps = 1e-6;
  c.rope_theta = 1000000.0;
  c.tie_word_embeddings = true;
  return c;
}

ModelConfig Llama3Scaled(ModelConfig c) {
  c.rope_theta = 500000.0;
  c.rope_scaling.type = RopeScaling::Type::kLlama3;
  c.rope_scaling.factor = 8.0;
  c.rope_scaling.low_freq_factor = 1.0;
  c.rope_scaling.high_freq_factor = 4.0;
  c.rope_scaling.original_max_position_embeddings = 8192;
  return c;
}

// A DeepSeek-V2/V3 shape; the MoE and rope fields are set by the caller.
ModelConfig Deepseek(bool v3, int64_t hidden, int64_t inter, int64_t layers, int64_t heads,
                     int64_t vocab, int64_t context) {
  ModelConfig c = Llama(hidden, inter, layers, heads, heads, vocab, context);
  c.architecture = v3 ? Architecture::kDeepseekV3 : Architecture::kDeepseekV2;
  c.model_type = v3 ? "deepseek_v3" : "deepseek_v2";
  c.rms_norm_eps = 1e-6;
  return c;
}

void SetMla(ModelConfig& c, int64_t q_lora, int64_t kv_lora, int64_t nope, int64_t rope,
            int64_t v) {
  DeepseekConfig& d = c.deepseek;
  d.q_lora_rank = q_lora;
  d.kv_lora_rank = kv_lora;
  d.qk_nope_head_dim = nope;
  d.qk_rope_head_dim = rope;
  d.v_head_dim = v;
  c.head_dim = nope + rope;
}

void SetYarn(ModelConfig& c, double factor, int64_t original, double mscale,
             double mscale_all_dim) {
  c.rope_scaling.type = RopeScaling::Type::kYarn;
  c.rope_scaling.factor = factor;
  c.rope_scaling.original_max_position_embeddings = original;
  c.rope_scaling.beta_fast = 32;
  c.rope_scaling.beta_slow = 1;
  c.rope_scaling.mscale = mscale;
  c.rope_scaling.mscale_all_dim = mscale_all_dim;
}

// The MoE routing of a DeepSeek shape: experts (routed, per token, shared, their width), dense
// leading layers, group-limited routing, scoring and the scaling of routed outputs.
struct Moe {
  int64_t routed, per_token, shared, width, first_dense, groups, topk_groups;
  DeepseekConfig::Scoring scoring;
  DeepseekConfig::TopkMethod method;
  double scale;
  bool norm_topk;
};

void SetMoe(ModelConfig& c, const Moe& m) {
  DeepseekConfig& d = c.deepseek;
  d.n_routed_experts = m.routed;
  d.num_experts_per_tok = m.per_token;
  d.n_shared_experts = m.shared;
  d.moe_intermediate_size = m.width;
  d.first_k_dense_replace = m.first_dense;
  d.n_group = m.groups;
  d.topk_group = m.topk_groups;
  d.scoring = m.scoring;
  d.topk_method = m.method;
  d.routed_scaling_factor = m.scale;
  d.norm_topk_prob = m.norm_topk;
}

struct Rng {  // xoshiro256** seeded by splitmix64
  uint64_t s[4];
  explicit Rng(uint64_t seed) {
    for (auto& v : s) {
      seed += 0x9e3779b97f4a7c15ull;
      uint64_t z = seed;
      z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
      z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
      v = z ^ (z >> 31);
    }
  }
  static uint64_t Rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  uint64_t Next() {
    const uint64_t result = Rotl(s[1] * 5, 7) * 9;
    const uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = Rotl(s[3], 45);
    return result;
  }
  double Uniform() { return static_cast<double>((Next() >> 11) + 1) * 0x1.0p-53; }
};

uint64_t HashName(const std::string& name, uint64_t seed) {
  uint64_t h = 1469598103934665603ull ^ seed;
  for (unsigned char ch : name) h = (h ^ ch) * 1099511628211ull;
  return h;
}

void Store(float v, DType dt, uint8_t* dst, size_t i) {
  switch (dt) {
    case DType::kF32:
      std::memcpy(dst + 4 * i, &v, 4);
      break;
    case DType::kF16: {
      const uint16_t h = F32ToF16(v);
      std::memcpy(dst + 2 * i, &h, 2);
      break;
    }
    default: {
      const uint16_t h = F32ToBf16(v);
      std::memcpy(dst + 2 * i, &h, 2);
      break;
    }
  }
}

constexpr size_t kChunk = 1 << 16;  // elements per independent random stream

}  // namespace

std::vector<std::string> SynthShapeNames() {
  return {"llama-110m",       "llama-110m-wide", "llama-110m-narrow",
          "tinyllama-1.1b",   "llama3-8b",       "qwen2-0.5b",
          "mistral-7b",       "tiny-llama",      "tiny-llama-8l",
          "tiny-qwen2",       "tiny-llama3",     "deepseek-v3-tiny",
          "deepseek-v2-tiny", "deepseek-v3-mid", "deepseek-v2-lite-shape",
          "llama3-70b",       "llama3-405b",     "qwen2-72b",
          "deepseek-v3"};
}

absl::StatusOr<ModelConfig> SynthConfigByName(const std::string& name) {
  if (name == "llama-110m") {
    ModelConfig c = Llama(768, 2048, 12, 12, 12, 32000, 1024);
    c.tie_word_embeddings = true;
    return c;
  }
  // llama-110m at twice and half its width (the same 64-wide heads): with it, bench/stage_cost
  // fits the cpu-here profile on three widths, which tells the FLOP rate from per-token costs.
  if (name == "llama-110m-wide" || name == "llama-110m-narrow") {
    const bool wide = name == "llama-110m-wide";
    ModelConfig c =
        wide ? Llama(1536, 4096, 6, 24, 24, 32000, 1024) : Llama(384, 1024, 12, 6, 6, 32000, 1024);
    c.tie_word_embeddings = true;
    return c;
  }
  if (name == "tinyllama-1.1b") return Llama(2048, 5632, 22, 32, 4, 32000, 2048);
  if (name == "llama3-8b") {
    ModelConfig c = Llama3Scaled(Llama(4096, 14336, 32, 32, 8, 128256, 8192));
    c.bos_token_id = 128000;
    c.eos_token_ids = {128001, 128009};
    return c;
  }
  if (name == "qwen2-0.5b") {
    ModelConfig c = Qwen2(896, 4864, 24, 14, 2, 151936, 32768);
    c.bos_token_id = -1;
    c.eos_token_ids = {151643};
    return c;
  }
  if (name == "mistral-7b") {
    ModelConfig c = Llama(4096, 14336, 32, 32, 8, 32000, 32768);
    c.architecture = Architecture::kMistral;
    c.model_type = "mistral";
    c.rope_theta = 1000000.0;
    return c;
  }
  if (name == "tiny-llama") return Llama(64, 172, 5, 8, 4, 512, 512);
  if (name == "tiny-llama-8l") return Llama(64, 160, 8, 4, 2, 512, 512);
  if (name == "tiny-qwen2") return Qwen2(64, 160, 4, 4, 2, 512, 512);
  if (name == "tiny-llama3") {
    ModelConfig c = Llama3Scaled(Llama(64, 160, 4, 4, 1, 512, 512));
    c.rope_scaling.original_max_position_embeddings = 128;
    return c;
  }
  if (name == "deepseek-v3-tiny") {
    // 4 layers (1 dense), 16 routed experts in 4 groups, top-4 from 2 groups, 1 shared expert,
    // sigmoid scoring with a correction bias, YaRN with distinct mscales, one MTP module.
    ModelConfig c = Deepseek(true, 64, 128, 4, 4, 512, 512);
    SetMla(c, 32, 32, 16, 8, 16);
    SetYarn(c, 4.0, 128, 1.0, 0.8);
    SetMoe(c, {16, 4, 1, 32, 1, 4, 2, DeepseekConfig::Scoring::kSigmoid,
               DeepseekConfig::TopkMethod::kNoAuxTc, 2.5, true});
    c.deepseek.num_nextn_predict_layers = 1;
    return c;
  }
  if (name == "deepseek-v2-tiny") {
    // V2-Lite's layout (no q compression, softmax gating) with V2's group-limited routing.
    ModelConfig c = Deepseek(false, 64, 128, 3, 4, 512, 512);
    SetMla(c, 0, 32, 16, 8, 16);
    SetYarn(c, 4.0, 128, 0.707, 0.707);
    SetMoe(c, {8, 3, 2, 32, 1, 4, 2, DeepseekConfig::Scoring::kSoftmax,
               DeepseekConfig::TopkMethod::kGroupLimitedGreedy, 2.0, false});
    return c;
  }
  if (name == "deepseek-v3-mid") {
    // About 0.9B parameters, V3's layout scaled down: for benchmarks on one machine.
    ModelConfig c = Deepseek(true, 1024, 2816, 8, 16, 32000, 4096);
    SetMla(c, 384, 256, 64, 32, 64);
    SetYarn(c, 4.0, 1024, 1.0, 1.0);
    SetMoe(c, {32, 4, 1, 512, 1, 4, 2, DeepseekConfig::Scoring::kSigmoid,
               DeepseekConfig::TopkMethod::kNoAuxTc, 2.5, true});
    return c;
  }
  // Published shapes of large models, for simulated stages (shardserve synth --config-only);
  // token ids stay those of the synthetic tokenizer.
  if (name == "llama3-70b") return Llama3Scaled(Llama(8192, 28672, 80, 64, 8, 128256, 131072));
  if (name == "llama3-405b") {
    return Llama3Scaled(Llama(16384, 53248, 126, 128, 8, 128256, 131072));
  }
  if (name == "qwen2-72b") {
    ModelConfig c = Qwen2(8192, 29568, 80, 64, 8, 152064, 32768);
    c.tie_word_embeddings = false;
    return c;
  }
  if (name == "deepseek-v3") {
    // DeepSeek-V3 (671B parameters, 37B active): 61 layers, the first 3 dense, 256 routed
    // experts (top 8 from 4 of 8 groups) and 1 shared expert per MoE layer, MLA.
    ModelConfig c = Deepseek(true, 7168, 18432, 61, 128, 129280, 163840);
    SetMla(c, 1536, 512, 128, 64, 128);
    SetYarn(c, 40.0, 4096, 1.0, 1.0);
    SetMoe(c, {256, 8, 1, 2048, 3, 8, 4, DeepseekConfig::Scoring::kSigmoid,
               DeepseekConfig::TopkMethod::kNoAuxTc, 2.5, true});
    return c;
  }
  if (name == "deepseek-v2-lite-shape") {
    // DeepSeek-V2-Lite's published shapes (15.7B parameters, 2.4B active).
    ModelConfig c = Deepseek(false, 2048, 10944, 27, 16, 102400, 163840);
    SetMla(c, 0, 512, 128, 64, 128);
    SetYarn(c, 40.0, 4096, 0.707, 0.707);
    c.bos_token_id = 100000;
    c.eos_token_ids = {100001};
    SetMoe(c, {64, 6, 2, 1408, 1, 1, 1, DeepseekConfig::Scoring::kSoftmax,
               DeepseekConfig::TopkMethod::kGreedy, 1.0, false});
    return c;
  }
  std::string known;
  for (const auto& n : SynthShapeNames()) absl::StrAppend(&known, known.empty() ? "" : ", ", n);
  return absl::InvalidArgumentError(
      absl::StrCat("unknown --like shape '", name, "' (known: ", known, ")"));
}

std::string SynthTokenizerJson(int64_t vocab_size) {
  using nlohmann::json;
  json vocab = json::object();
  int64_t id = 0;
  vocab["<unk>"] = id++;
  vocab["<s>"] = id++;
  vocab["</s>"] = id++;
  for (int b = 0; b < 256; ++b) {
    char buf[8];
    std::snprintf(buf, sizeof(buf), "<0x%02X>", b);
    vocab[buf] = id++;
  }
  // Printable ASCII, alone and after the word-start marker.
  for (int ch = 33; ch < 127 && id < vocab_size; ++ch)
    vocab[std::string(1, static_cast<char>(ch))] = id++;
  vocab["\xe2\x96\x81"] = id++;  // "▁"
  for (int ch = 33; ch < 127 && id < vocab_size; ++ch) {
    vocab["\xe2\x96\x81" + std::string(1, static_cast<char>(ch))] = id++;
  }
  json merges = json::array();
  for (int ch = 33; ch < 127; ++ch) {
    const std::string piece = "\xe2\x96\x81" + std::string(1, static_cast<char>(ch));
    if (vocab.contains(piece))
      merges.push_back("\xe2\x96\x81 " + std::string(1, static_cast<char>(ch)));
  }
  for (; id < vocab_size; ++id) vocab[absl::StrCat("<unused", id, ">")] = id;
  json added = json::array();
  const char* specials[] = {"<unk>", "<s>", "</s>"};
  for (int i = 0; i < 3; ++i) {
    added.push_back({{"id", i},
                     {"content", specials[i]},
                     {"single_word", false},
                     {"lstrip", false},
                     {"rstrip", false},
                     {"normalized", false},
                     {"special", true}});
  }
  json tok = {
      {"version", "1.0"},
      {"truncation", nullptr},
      {"padding", nullptr},
      {"added_tokens", added},
      {"normalizer",
       {{"type", "Sequence"},
        {"normalizers",
         {{{"type", "Prepend"}, {"prepend", "\xe2\x96\x81"}},
          {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", "\xe2\x96\x81"}}}}}},
      {"pre_tokenizer", nullptr},
      {"post_processor",
       {{"type", "TemplateProcessing"},
        {"single",
         {{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}},
          {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
        {"pair",
         {{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}},
          {{"Sequence", {{"id", "A"}, {"type_id", 0}}}},
          {{"Sequence", {{"id", "B"}, {"type_id", 1}}}}}},
        {"special_tokens", {{"<s>", {{"id", "<s>"}, {"ids", {1}}, {"tokens", {"<s>"}}}}}}}},
      {"decoder",
       {{"type", "Sequence"},
        {"decoders",
         {{{"type", "Replace"}, {"pattern", {{"String", "\xe2\x96\x81"}}}, {"content", " "}},
          {{"type", "ByteFallback"}},
          {{"type", "Fuse"}},
          {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}}}}},
      {"model",
       {{"type", "BPE"},
        {"dropout", nullptr},
        {"unk_token", "<unk>"},
        {"continuing_subword_prefix", nullptr},
        {"end_of_word_suffix", nullptr},
        {"fuse_unk", true},
        {"byte_fallback", true},
        {"vocab", vocab},
        {"merges", merges}}}};
  return tok.dump(1);
}

namespace {

// config.json, tokenizer.json and tokenizer_config.json.
absl::Status WriteSynthTexts(const ModelConfig& c, const std::string& out_dir) {
  namespace fs = std::filesystem;
  auto write_text = [&](const std::string& name, const std::string& text) -> absl::Status {
    std::ofstream f(fs::path(out_dir) / name);
    f << text << "\n";
    if (!f) return absl::DataLossError(absl::StrCat("error writing ", out_dir, "/", name));
    return absl::OkStatus();
  };
  RETURN_IF_ERROR(write_text("config.json", c.ToJson()));
  RETURN_IF_ERROR(write_text("tokenizer.json", SynthTokenizerJson(c.vocab_size)));
  nlohmann::json tc = {{"add_bos_token", true},
                       {"add_eos_token", false},
                       {"bos_token", "<s>"},
                       {"eos_token", "</s>"},
                       {"unk_token", "<unk>"},
                       {"model_max_length", c.max_position_embeddings},
                       {"tokenizer_class", "LlamaTokenizer"},
                       {"legacy", true}};
  RETURN_IF_ERROR(write_text("tokenizer_config.json", tc.dump(2)));
  return absl::OkStatus();
}

}  // namespace

absl::Status WriteSynthModel(const ModelConfig& c, const std::string& out_dir,
                             const SynthOptions& options) {
  namespace fs = std::filesystem;
  if (c.vocab_size < 259 + 94 * 2 + 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "vocab_size ", c.vocab_size, " is too small for the synthetic tokenizer (>= 448)"));
  }
  std::error_code ec;
  fs::create_directories(out_dir, ec);
  if (ec)
    return absl::PermissionDeniedError(absl::StrCat("cannot create ", out_dir, ": ", ec.message()));
  ModelConfig written = c;
  written.dtype = options.dtype;
  if (options.config_only) return WriteSynthTexts(written, out_dir);

  std::vector<TensorSpec> specs;
  std::vector<bool> is_norm;
  auto add = [&](const std::string& name, std::vector<int64_t> shape, bool norm = false,
                 bool f32 = false) {
    specs.push_back({name, norm || f32 ? DType::kF32 : options.dtype, std::move(shape)});
    is_norm.push_back(norm);
  };
  const int64_t H = c.hidden_size, D = c.head_dim;
  add("model.embed_tokens.weight", {c.vocab_size, H});
  if (c.is_deepseek()) {
    // Hugging Face DeepSeek-V2/V3 names; MTP modules follow the main layers.
    const DeepseekConfig& d = c.deepseek;
    const int64_t NH = c.num_heads, QD = d.qk_nope_head_dim + d.qk_rope_head_dim;
    auto mlp = [&](const std::string& p, int64_t inter) {
      add(p + "gate_proj.weight", {inter, H});
      add(p + "up_proj.weight", {inter, H});
      add(p + "down_proj.weight", {H, inter});
    };
    for (int64_t l = 0; l < c.num_layers + d.num_nextn_predict_layers; ++l) {
      const std::string p = absl::StrCat("model.layers.", l, ".");
      add(p + "input_layernorm.weight", {H}, true);
      if (d.q_lora_rank > 0) {
        add(p + "self_attn.q_a_proj.weight", {d.q_lora_rank, H});
        add(p + "self_attn.q_a_layernorm.weight", {d.q_lora_rank}, true);
        add(p + "self_attn.q_b_proj.weight", {NH * QD, d.q_lora_rank});
      } else {
        add(p + "self_attn.q_proj.weight", {NH * QD, H});
      }
      add(p + "self_attn.kv_a_proj_with_mqa.weight", {d.kv_lora_rank + d.qk_rope_head_dim, H});
      add(p + "self_attn.kv_a_layernorm.weight", {d.kv_lora_rank}, true);
      add(p + "self_attn.kv_b_proj.weight",
          {NH * (d.qk_nope_head_dim + d.v_head_dim), d.kv_lora_rank});
      add(p + "self_attn.o_proj.weight", {H, NH * d.v_head_dim});
      add(p + "post_attention_layernorm.weight", {H}, true);
      if (d.IsMoeLayer(l)) {
        add(p + "mlp.gate.weight", {d.n_routed_experts, H});
        if (d.topk_method == DeepseekConfig::TopkMethod::kNoAuxTc) {
          add(p + "mlp.gate.e_score_correction_bias", {d.n_routed_experts}, false, true);
        }
        for (int64_t e = 0; e < d.n_routed_experts; ++e) {
          mlp(absl::StrCat(p, "mlp.experts.", e, "."), d.moe_intermediate_size);
        }
        if (d.n_shared_experts > 0) {
          mlp(p + "mlp.shared_experts.", d.moe_intermediate_size * d.n_shared_experts);
        }
      } else {
        mlp(p + "mlp.", c.intermediate_size);
      }
      if (l >= c.num_layers) {
        add(p + "enorm.weight", {H}, true);
        add(p + "hnorm.weight", {H}, true);
        add(p + "eh_proj.weight", {H, 2 * H});
        add(p + "shared_head.norm.weight", {H}, true);
      }
    }
  }
  for (int64_t l = 0; l < (c.is_deepseek() ? 0 : c.num_layers); ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    add(p + "input_layernorm.weight", {H}, true);
    add(p + "self_attn.q_proj.weight", {c.num_heads * D, H});
    add(p + "self_attn.k_proj.weight", {c.num_kv_heads * D, H});
    add(p + "self_attn.v_proj.weight", {c.num_kv_heads * D, H});
    if (c.qkv_bias) {
      add(p + "self_attn.q_proj.bias", {c.num_heads * D});
      add(p + "self_attn.k_proj.bias", {c.num_kv_heads * D});
      add(p + "self_attn.v_proj.bias", {c.num_kv_heads * D});
    }
    add(p + "self_attn.o_proj.weight", {H, c.num_heads * D});
    add(p + "post_attention_layernorm.weight", {H}, true);
    add(p + "mlp.gate_proj.weight", {c.intermediate_size, H});
    add(p + "mlp.up_proj.weight", {c.intermediate_size, H});
    add(p + "mlp.down_proj.weight", {H, c.intermediate_size});
  }
  add("model.norm.weight", {H}, true);
  if (!c.tie_word_embeddings) add("lm_head.weight", {c.vocab_size, H});

  size_t total_bytes = 0;
  for (const auto& s : specs) total_bytes += s.nbytes();
  ThreadPool pool(options.threads);
  size_t written_bytes = 0;
  const bool tty = options.progress && isatty(STDERR_FILENO);
  auto fill = [&](size_t i, uint8_t* dst) {
    const TensorSpec& s = specs[i];
    const size_t n = s.nbytes() / DTypeSize(s.dtype);
    if (is_norm[i]) {
      for (size_t e = 0; e < n; ++e) Store(1.0f, s.dtype, dst, e);
    } else {
      const uint64_t base = HashName(s.name, options.seed);
      const int64_t chunks = static_cast<int64_t>((n + kChunk - 1) / kChunk);
      pool.ParallelFor(chunks, 1, [&](int64_t c0, int64_t c1) {
        for (int64_t ch = c0; ch < c1; ++ch) {
          Rng rng(base + static_cast<uint64_t>(ch) * 0x9e3779b97f4a7c15ull);
          const size_t e0 = static_cast<size_t>(ch) * kChunk;
          const size_t e1 = std::min(n, e0 + kChunk);
          for (size_t e = e0; e < e1; e += 2) {  // Box-Muller, two values per draw
            const double r = std::sqrt(-2.0 * std::log(rng.Uniform()));
            const double th = 2.0 * M_PI * rng.Uniform();
            const double sd = options.stddev;
            Store(static_cast<float>(sd * r * std::cos(th)), s.dtype, dst, e);
            if (e + 1 < e1) Store(static_cast<float>(sd * r * std::sin(th)), s.dtype, dst, e + 1);
          }
        }
      });
    }
    written_bytes += s.nbytes();
    if (tty) {
      std::fprintf(stderr, "\rsynth: %5.1f%% of %.2f GB", 100.0 * written_bytes / total_bytes,
                   total_bytes / 1e9);
    }
  };
  RETURN_IF_ERROR(WriteSafetensors((fs::path(out_dir) / "model.safetensors").string(), specs, fill,
                                   {{"format", "pt"}}));
  if (tty) std::fprintf(stderr, "\n");
  return WriteSynthTexts(written, out_dir);
}

}  // namespace shardserve
