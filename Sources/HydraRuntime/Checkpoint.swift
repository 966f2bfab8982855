import Foundation
import HydraCore

/// Checkpoints in the layouts other tools load: for `gpt`, the names, shapes and `config.json` of
/// Hugging Face's `GPT2LMHeadModel` (`transformer.h.0.attn.c_attn.weight`, ...; the head is tied to
/// `transformer.wte.weight` and not stored); for `mlp`, the `state_dict` names of the equivalent
/// `nn.Sequential` (`0.weight`, `0.bias`, `2.weight`, ...).
public enum Checkpoint {
  public static let weightsFile = "model.safetensors"
  public static let configFile = "config.json"
  /// Optimizer state (`<name>.state0`, `.state1`), for resuming; not read by other tools.
  public static let optimizerFile = "optimizer.safetensors"
  /// The step and the losses so far, for resuming. Written last.
  public static let trainerStateFile = "trainer_state.json"

  static func storedName(_ parameter: Parameter, spec: ModelSpec) -> String {
    if case .gpt = spec { return "transformer." + parameter.name }
    return parameter.name
  }

  /// Writes `model.safetensors` and `config.json` into `folder` (created if needed). Each file is
  /// written beside its final name and renamed over it, so a crash leaves the previous checkpoint.
  public static func write(_ run: ModelRun, to folder: String, device: Int = 0) throws {
    try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
    // Shard by shard (each may have to come off disk), copied out so that all are at hand at once.
    var weights: [CopiedTensor] = [], states: [CopiedTensor] = []
    try run.withEveryShard(on: device) { s in
      for p in run.parameters(ofShard: s) where p.replicaOf == nil {
        let name = storedName(p, spec: run.spec)
        weights.append(CopiedTensor(name: name, shape: p.shape, values: p.value.array))
        for (i, t) in p.state.enumerated() {
          states.append(CopiedTensor(name: "\(name).state\(i)", shape: p.shape, values: t.array))
        }
      }
    }
    // Every file says its step, so that a resume can tell a checkpoint cut short between files.
    let step = "\(run.step)"
    try writeSafeTensors(weights, metadata: ["format": "pt", "hydra_step": step], to: folder + "/" + weightsFile)
    try writeSafeTensors(states, metadata: ["hydra_step": step], to: folder + "/" + optimizerFile)
    try writeAtomically(configJSON(run.spec), to: folder + "/" + configFile)
    // JSON has no NaN or infinity: null stands for them.
    func number(_ x: Double) -> Any { x.isFinite ? x : NSNull() }
    let state: [String: Any] = [
      "step": run.step,
      "train_losses": run.trainLosses.map(number),
      "evaluations": run.evaluations.map {
        ["step": $0.step, "loss": number($0.loss), "accuracy": number($0.accuracy)]
      },
    ]
    let json = try JSONSerialization.data(withJSONObject: state, options: [.sortedKeys])
    try writeAtomically(String(decoding: json, as: UTF8.self) + "\n", to: folder + "/" + trainerStateFile)
  }

  /// Whether `folder` holds a checkpoint to resume from.
  public static func canResume(from folder: String) -> Bool {
    FileManager.default.fileExists(atPath: folder + "/" + trainerStateFile)
  }

  /// Puts a model back where its checkpoint in `folder` left it: weights, optimizer state, step
  /// and the losses so far. The continued run computes exactly what an uninterrupted one would.
  public static func resume(_ run: ModelRun, from folder: String, device: Int = 0) throws {
    let statePath = folder + "/" + trainerStateFile
    // JSONDecoder reads numbers exactly; JSONSerialization on Linux reads some of them 1 ulp off
    // (as NSDecimalNumber), and a resumed run must carry the very losses it had.
    guard let data = FileManager.default.contents(atPath: statePath),
      let state = try? JSONDecoder().decode(TrainerState.self, from: data),
      state.step >= 0, state.step <= run.settings.steps
    else { throw InputError(file: statePath, "not a trainer state this run can resume from") }
    let step = state.step
    let weights = try SafeTensorsFile(path: folder + "/" + weightsFile)
    let optimizer = try SafeTensorsFile(path: folder + "/" + optimizerFile)
    for (file, st) in [(weightsFile, weights), (optimizerFile, optimizer)] where st.metadata["hydra_step"] != "\(step)"
    {
      throw InputError(
        file: folder + "/" + file,
        "holds step \(st.metadata["hydra_step"] ?? "?"), but \(trainerStateFile) says \(step): the checkpoint was cut short"
      )
    }
    try load(into: run, from: folder, device: device)
    try run.withEveryShard(on: device, heldHere: true) { s in
      for p in run.parameters(ofShard: s) where p.replicaOf == nil {
        for (i, t) in p.state.enumerated() {
          let v = try optimizer.floats("\(storedName(p, spec: run.spec)).state\(i)", expectedShape: p.shape)
          v.withUnsafeBufferPointer { t.data.update(from: $0.baseAddress!, count: t.count) }
        }
      }
    }
    run.restore(
      step: step, trainLosses: state.train_losses.map { $0 ?? .nan },
      evaluations: state.evaluations.map {
        Evaluation(step: $0.step, loss: $0.loss ?? .nan, accuracy: $0.accuracy ?? .nan)
      })
  }

  /// `trainer_state.json` as `write` lays it out (null for a loss that was not finite).
  private struct TrainerState: Decodable {
    var step: Int
    var train_losses: [Double?]
    var evaluations: [EvaluationEntry]
    struct EvaluationEntry: Decodable {
      var step: Int
      var loss: Double?
      var accuracy: Double?
    }
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

  /// Checks, without loading any values, that `path` holds every tensor `spec` needs with the right
  /// shape (blocks are built one at a time, so this needs one block's memory at most).
  public static func check(_ spec: ModelSpec, against path: String) throws {
    let (file, st) = try open(path)
    for i in 0..<spec.blockCount {
      for p in try spec.makeBlock(i, memory: nil).parameters where p.replicaOf == nil {
        _ = try entry(for: p, spec: spec, in: st, file: file)
      }
    }
  }

  private static func open(_ path: String) throws -> (String, SafeTensorsFile) {
    var isDir: ObjCBool = false
    guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else {
      throw InputError(file: path, "the initial checkpoint does not exist")
    }
    let file = isDir.boolValue ? path + "/" + weightsFile : path
    return (file, try SafeTensorsFile(path: file))
  }

  /// The stored name for `p` and whether its rows must be cut (a longer position table).
  private static func entry(for p: Parameter, spec: ModelSpec, in st: SafeTensorsFile, file: String) throws -> (
    String, Bool
  ) {
    let candidates = [storedName(p, spec: spec), p.name]
    guard let name = candidates.first(where: { st.entries[$0] != nil }) else {
      throw InputError(file: file, "tensor \"\(candidates[0])\" is missing (the model needs shape \(p.shape))")
    }
    let shape = st.entries[name]!.shape
    if p.name == "wpe.weight", shape.count == 2, shape[1] == p.shape[1], shape[0] > p.shape[0] { return (name, true) }
    guard shape == p.shape else {
      throw InputError(file: file, "tensor \"\(name)\" has shape \(shape), the model needs \(p.shape)")
    }
    return (name, false)
  }

  /// Loads initial weights into a model: `path` is a folder holding `model.safetensors` (a Hugging
  /// Face download, or a hydra-mpi checkpoint) or a `.safetensors` file. Names may carry the
  /// `transformer.` prefix or not; F16/BF16 are widened. A GPT-2 position table longer than the
  /// model's context is cut to its first `context` rows.
  public static func load(into run: ModelRun, from path: String, device: Int = 0) throws {
    let (file, st) = try open(path)
    try run.withEveryShard(on: device, heldHere: true) { s in
      for p in run.parameters(ofShard: s) where p.replicaOf == nil {
        let (name, cut) = try entry(for: p, spec: run.spec, in: st, file: file)
        let values = cut ? Array(try st.floats(name).prefix(p.count)) : try st.floats(name, expectedShape: p.shape)
        values.withUnsafeBufferPointer { p.value.data.update(from: $0.baseAddress!, count: p.count) }
      }
    }
  }
}

/// A tensor copied out of its shard, to be written with others.
private struct CopiedTensor {
  var name: String
  var shape: [Int]
  var values: [Float]
}

/// Writes `tensors` as one safetensors file, every buffer held valid at once.
private func writeSafeTensors(_ tensors: [CopiedTensor], metadata: [String: String], to path: String) throws {
  var pointers: [UnsafeBufferPointer<Float>] = []
  func nest(_ i: Int) throws {
    if i == tensors.count {
      try SafeTensorsFile.write(
        tensors.indices.map { (name: tensors[$0].name, shape: tensors[$0].shape, values: pointers[$0]) },
        metadata: metadata, to: path)
      return
    }
    try tensors[i].values.withUnsafeBufferPointer { p in
      pointers.append(p)
      try nest(i + 1)
    }
  }
  try nest(0)
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
