import Foundation
import HydraCore

/// Checkpoints in the layouts other tools load: for `gpt`, the names, shapes and `config.json` of
/// Hugging Face's `GPT2LMHeadModel` (`transformer.h.0.attn.c_attn.weight`, ...; the head is tied to
/// `transformer.wte.weight` and not stored); for `mlp`, the `state_dict` names of the equivalent
/// `nn.Sequential` (`0.weight`, `0.bias`, `2.weight`, ...).
public enum Checkpoint {
  public static let weightsFile = "model.safetensors"
  public static let configFile = "config.json"

  static func storedName(_ parameter: Parameter, spec: ModelSpec) -> String {
    if case .gpt = spec { return "transformer." + parameter.name }
    return parameter.name
  }

  /// Writes `model.safetensors` and `config.json` into `folder` (created if needed). Each file is
  /// written beside its final name and renamed over it, so a crash leaves the previous checkpoint.
  public static func write(_ run: ModelRun, to folder: String) throws {
    try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
    let params = run.ownedParameters
    let tensors = params.map { p in
      (name: storedName(p, spec: run.spec), shape: p.shape, values: UnsafeBufferPointer(p.value.buffer))
    }
    try SafeTensorsFile.write(tensors, metadata: ["format": "pt"], to: folder + "/" + weightsFile)
    try writeAtomically(configJSON(run.spec), to: folder + "/" + configFile)
  }

  static func configJSON(_ spec: ModelSpec) -> String {
    switch spec {
    case .gpt(let s):
      // GPT-2 with dropout off, gelu_new (the tanh GELU), LayerNorm eps 1e-5, tied head.
      return """
        {
          "architectures": ["GPT2LMHeadModel"],
          "model_type": "gpt2",
          "vocab_size": \(s.vocab),
          "n_positions": \(s.context),
          "n_ctx": \(s.context),
          "n_embd": \(s.channels),
          "n_layer": \(s.layers),
          "n_head": \(s.heads),
          "n_inner": null,
          "activation_function": "gelu_new",
          "resid_pdrop": 0.0,
          "embd_pdrop": 0.0,
          "attn_pdrop": 0.0,
          "summary_first_dropout": 0.0,
          "layer_norm_epsilon": 1e-05,
          "initializer_range": 0.02,
          "scale_attn_weights": true,
          "tie_word_embeddings": true,
          "bos_token_id": null,
          "eos_token_id": null,
          "torch_dtype": "float32"
        }

        """
    case .mlp(let inputs, let hidden, let classes):
      let layers = ([inputs] + hidden + [classes]).map(String.init).joined(separator: ", ")
      return """
        {
          "model_type": "hydra-mlp",
          "description": "torch.nn.Sequential of Linear layers with ReLU between them; widths in order",
          "widths": [\(layers)],
          "inputs": \(inputs),
          "hidden": [\(hidden.map(String.init).joined(separator: ", "))],
          "classes": \(classes)
        }

        """
    }
  }

  /// Loads initial weights into a model: `path` is a folder holding `model.safetensors` (a Hugging
  /// Face download, or a hydra-mpi checkpoint) or a `.safetensors` file. Names may carry the
  /// `transformer.` prefix or not; F16/BF16 are widened. A GPT-2 position table longer than the
  /// model's context is cut to its first `context` rows.
  public static func load(into run: ModelRun, from path: String) throws {
    var isDir: ObjCBool = false
    guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else {
      throw InputError(file: path, "the initial checkpoint does not exist")
    }
    let file = isDir.boolValue ? path + "/" + weightsFile : path
    let st = try SafeTensorsFile(path: file)
    for p in run.ownedParameters {
      let candidates = [storedName(p, spec: run.spec), p.name]
      guard let name = candidates.first(where: { st.entries[$0] != nil }) else {
        throw InputError(file: file, "tensor \"\(candidates[0])\" is missing (the model needs shape \(p.shape))")
      }
      let entry = st.entries[name]!
      var values: [Float]
      if p.name == "wpe.weight", entry.shape.count == 2, entry.shape[1] == p.shape[1], entry.shape[0] > p.shape[0] {
        values = Array(try st.floats(name).prefix(p.count))
      } else {
        values = try st.floats(name, expectedShape: p.shape)
      }
      values.withUnsafeBufferPointer { p.value.data.update(from: $0.baseAddress!, count: p.count) }
    }
  }
}

/// Writes `text` to `path` through a temporary file in the same folder and a rename.
func writeAtomically(_ text: String, to path: String) throws {
  let temp = path + ".tmp-\(getpid())"
  try Data(text.utf8).write(to: URL(fileURLWithPath: temp))
  if rename(temp, path) != 0 {
    let err = String(cString: strerror(errno))
    unlink(temp)
    throw RuntimeError("cannot write \(path): \(err)")
  }
}
