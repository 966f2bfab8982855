import XCTest

@testable import HydraConfig

/// A catalogue of bad job files: each must fail with the right line and a message naming the problem.
/// `Fixture.minimal` is 12 lines ([job] 1-2, [data] 4-6, [model] 8-9, [train] 11-12); appended text
/// starts at line 13.
final class BadJobTests: XCTestCase {
  typealias M = Fixture

  func testSyntaxError() throws {
    try Fixture().assertFails(
      M.minimal(appending: "[cluster]\ndevices = = 2\n"), line: 14, ["TOML syntax error", "column"])
  }

  func testUnknownTables() throws {
    let f = try Fixture()
    f.assertFails(
      M.minimal(appending: "[clusters]\ndevices = 2\n"), line: 13,
      ["unknown table [clusters]", "valid tables: job, cluster, data"])
    f.assertFails("plugins = 1\n" + M.minimal, line: 1, ["plugins must be a table ([plugins]), found an integer"])
    f.assertFails("seed = 1\n" + M.minimal, line: 1, ["unknown key \"seed\" outside any table"])
  }

  func testUnknownKeyInEachTable() throws {
    let f = try Fixture()
    f.assertFails(
      M.minimal(replacing: 3, with: "nmae = \"x\""), line: 3,
      ["unknown key \"nmae\" in [job]", "valid keys: name, output, seed"])
    f.assertFails(
      M.minimal(replacing: 7, with: "validation = 0.1"), line: 7,
      ["unknown key \"validation\" in [data]", "validation_fraction"])
    f.assertFails(
      M.minimal(replacing: 10, with: "dmodel = 64"), line: 10, ["unknown key \"dmodel\" in [model]", "d_model"])
    f.assertFails(
      M.minimal(appending: "learning_rate = 0.1\n"), line: 13, ["unknown key \"learning_rate\" in [train]", "lr"])
    f.assertFails(
      M.minimal(appending: "[cluster]\ngpus = 2\n"), line: 14,
      ["unknown key \"gpus\" in [cluster]", "threads_per_device"])
    f.assertFails(
      M.minimal(appending: "[plugins]\nlibs = []\n"), line: 14, ["unknown key \"libs\" in [plugins]", "load"])
    f.assertFails(
      M.minimal(appending: "[[models]]\n\"train.lr\" = 0.1\n[[models]]\n\"model.dmodel\" = 64\n"), line: 16,
      ["unknown key \"model.dmodel\" in [[models]] entry 2", "model.d_model"])
  }

  func testWrongTypes() throws {
    let f = try Fixture()
    f.assertFails(
      M.minimal(replacing: 12, with: "steps = \"ten\""), line: 12,
      ["train.steps", "expected an integer", "found a string"])
    f.assertFails(
      M.minimal(replacing: 12, with: "steps = 10.5"), line: 12,
      ["train.steps", "expected an integer", "found a floating-point number"])
    f.assertFails(
      M.minimal(appending: "lr = \"fast\"\n"), line: 13, ["train.lr", "expected a number", "found a string"])
    f.assertFails(
      M.minimal(appending: "shuffle = 1\n"), line: 13, ["train.shuffle", "expected a boolean", "found an integer"])
    f.assertFails(
      M.minimal(replacing: 10, with: "hidden = [64, \"x\"]"), line: 10, ["model.hidden", "array of integers"])
    f.assertFails(
      M.minimal(appending: "[cluster]\ndevice_memory = true\n"), line: 14, ["cluster.device_memory", "found a boolean"])
  }

  func testSweepProblems() throws {
    let f = try Fixture()
    f.assertFails(
      M.minimal(appending: "[sweep]\n\"train.lr\" = [0.1]\n\"model.layers\" = []\n"), line: 15,
      ["sweep key \"model.layers\" is an empty list"])
    f.assertFails(
      M.minimal(appending: "[sweep]\n\"train.learning_rate\" = [1e-3]\n"), line: 14,
      ["sweep key \"train.learning_rate\" is unknown", "train.lr"])
    f.assertFails(
      M.minimal(appending: "[sweep]\n\"cluster.devices\" = [1, 2]\n"), line: 14,
      ["sweep key \"cluster.devices\" is unknown"])
    f.assertFails(
      M.minimal(appending: "[sweep]\n\"train.lr\" = 1e-3\n"), line: 14,
      ["sweep key \"train.lr\" must be a list", "found a floating-point number"])
    f.assertFails(
      M.minimal(appending: "[sweep]\n\"train.steps\" = [5, 6]\n\"train.lr\" = [1e-3, -1.0]\n"), line: 15,
      ["train.lr must be > 0 (got -1.0)", "in model m001 of [sweep]"])
    f.assertFails(
      M.minimal(appending: "[sweep]\n\"model.d_model\" = [64, 66]\n"), line: 14,
      ["model.d_model (66) must be divisible by model.heads (4)", "m001"])
  }

  func testRanges() throws {
    let f = try Fixture()
    f.assertFails(
      M.minimal(appending: "[cluster]\ndevices = 0\n"), line: 14, ["cluster.devices must be in 1...65536 (got 0)"])
    f.assertFails(
      M.minimal(appending: "[cluster]\nthreads_per_device = -1\n"), line: 14,
      ["cluster.threads_per_device must be in 1...1024 (got -1)"])
    f.assertFails(M.minimal(appending: "lr = -0.1\n"), line: 13, ["train.lr must be > 0 (got -0.1)"])
    f.assertFails(
      M.minimal(replacing: 10, with: "d_model = 130"), line: 10,
      ["model.d_model (130) must be divisible by model.heads (4)"])
    f.assertFails(
      M.minimal(replacing: 7, with: "validation_fraction = 1"), line: 7,
      ["data.validation_fraction must be in [0, 1) (got 1)"])
    f.assertFails(
      M.minimal(appending: "warmup_steps = 11\n"), line: 13, ["train.warmup_steps (11) must be <= train.steps (10)"])
    f.assertFails(M.minimal(appending: "betas = [0.9]\n"), line: 13, ["train.betas must be two numbers"])
    f.assertFails(M.minimal(appending: "momentum = 1.0\n"), line: 13, ["train.momentum must be in [0, 1)"])
    f.assertFails(
      M.minimal(replacing: 10, with: "hidden = [64, 0]"), line: 10,
      ["model.hidden must be a list of at most 4096 sizes, each in 1...65536"])
    f.assertFails(M.minimal(replacing: 2, with: "name = \"a b\""), line: 2, ["job.name must be letters, digits"])
    f.assertFails(
      M.minimal(replacing: 9, with: "kind = \"cnn\""), line: 9,
      ["model.kind = \"cnn\" is not valid", "\"gpt\", \"mlp\""])
    f.assertFails(M.minimal(replacing: 5, with: "format = \"json\""), line: 5, ["data.format = \"json\" is not valid"])
    f.assertFails(
      M.minimal(appending: "optimizer = \"adam\"\n"), line: 13, ["train.optimizer = \"adam\" is not valid", "\"sgd\""])
  }

  func testMissingThings() throws {
    let f = try Fixture()
    f.assertFails(
      M.minimal(replacing: 6, with: "path = \"nope/missing.txt\""), line: 6,
      ["data.path: no such file: \(f.dir)/nope/missing.txt"])
    f.assertFails(M.minimal(replacing: 2, with: "seed = 1"), line: 1, ["missing required key \"name\" in [job]"])
    f.assertFails(M.minimal(replacing: 12, with: "lr = 0.01"), line: 11, ["missing required key \"steps\" in [train]"])
    f.assertFails(M.minimal(replacing: 9, with: "kind = \"mlp\""), line: 9, ["model.classes is missing", "mlp"])
    f.assertFails(
      M.minimal(appending: "[plugins]\nload = [\"libnope.so\"]\n"), line: 14,
      ["plugins.load: no such file", "libnope.so"])
    f.assertFails(
      M.minimal(replacing: 10, with: "init = \"gpt2\""), line: 10, ["model.init: no such file: \(f.dir)/gpt2"])
    // No [data] table at all: no line to name.
    f.assertFails(
      "[job]\nname = \"x\"\n[model]\nkind = \"gpt\"\n[train]\nsteps = 1\n", line: nil,
      ["missing required key \"format\" in [data]"])
  }

  func testBadSizes() throws {
    let f = try Fixture()
    for (text, word) in [
      ("\"12 G\"", "unknown unit \"G\""), ("\"12gb\"", "unknown unit \"gb\""), ("\"abc\"", "is not a size"),
      ("\"12 GiBs\"", "unknown unit \"GiBs\""), ("\"-1GiB\"", "must be positive"), ("-5", "must be a positive"),
      ("0", "must be a positive"), ("\"0MiB\"", "at least 1 byte"), ("\"1.2.3MB\"", "is not a size"),
    ] {
      f.assertFails(
        M.minimal(appending: "[cluster]\ndevices = 1\nhost_memory = \(text)\n"), line: 15,
        ["cluster.host_memory", word])
    }
  }

  func testUnregisteredPlugins() throws {
    let f = try Fixture()
    f.assertFails(
      M.minimal(appending: "[scheduler]\nname = \"lrft\"\n"), line: 14,
      ["scheduler \"lrft\" is not registered; registered: lrtf, fifo, round-robin"])
    f.assertFails(
      M.minimal(appending: "[partitioner]\nname = \"greedy\"\n"), line: 14,
      ["partitioner \"greedy\" is not registered; registered: memory-greedy, balanced, fixed"])
    f.assertFails(
      M.minimal(appending: "[cluster]\nkernels = \"cuda\"\n"), line: 14,
      ["kernels \"cuda\" is not registered; registered: cpu, reference"])
    f.assertFails(
      M.minimal(appending: "[cluster]\nbackend = \"nccl\"\n"), line: 14,
      ["backend \"nccl\" is not registered; registered: shm, mpi"])
    f.assertFails(
      M.minimal(appending: "[scheduler]\nname = \"fifo\"\nweights = { a = 1 }\n"), line: 15,
      ["scheduler.weights: options must be plain values"])
  }

  func testDuplicateMembers() throws {
    let f = try Fixture()
    f.assertFails(
      M.minimal(appending: "[sweep]\n\"train.lr\" = [1e-3, 2e-3, 1e-3]\n"), line: 14,
      ["duplicate model: m000 and m002"])
    f.assertFails(
      M.minimal(appending: "[[models]]\n\"train.lr\" = 0.002\n\n[[models]]\n\"train.lr\" = 0.002\n"), line: 17,
      ["duplicate model: m000 and m001"])
    // An override equal to the base value still makes the same model.
    f.assertFails(
      M.minimal(appending: "[sweep]\n\"train.steps\" = [10]\n[[models]]\n\"model.heads\" = 4\n"), line: 16,
      ["duplicate model: m000 and m001"])
  }

  func testASweepTooLargeIsRefusedBeforeItIsExpanded() throws {
    let f = try Fixture()
    // 40^12 (about 1.7e19) overflows Int: counted with checked arithmetic, refused at once.
    let values = "[" + (1...40).map { "\($0)" }.joined(separator: ", ") + "]"
    let keys = ["train.steps", "train.batch_size", "train.eval_batches", "train.keep_checkpoints",
                "train.eval_every", "train.checkpoint_every", "train.warmup_steps", "model.layers",
                "model.context", "model.heads", "model.vocab", "model.d_model"]
    let sweep = keys.map { "\"\($0)\" = \(values)" }.joined(separator: "\n")
    let start = Date()
    f.assertFails(M.minimal(appending: "[sweep]\n\(sweep)\n"), line: 14, ["more than \(Int.max) models", "at most 10000"])
    // 101 x 100 = 10,100 by hand, and 1 [[models]] entry: over the limit by 101.
    let a = "[" + (1...101).map { "\(Double($0) * 1e-4)" }.joined(separator: ", ") + "]"
    let b = "[" + (1...100).map { "\(Double($0) * 1e-3)" }.joined(separator: ", ") + "]"
    f.assertFails(
      M.minimal(appending: "[sweep]\n\"train.lr\" = \(a)\n\"train.weight_decay\" = \(b)\n[[models]]\n\"train.lr\" = 0.5\n"),
      line: 14, ["the job has 10101 models ([sweep] 101 x 100 plus 1 [[models]] entries)"])
    XCTAssertLessThan(Date().timeIntervalSince(start), 5, "the counts must be refused before the members are built")
    // 100 x 100 = 10,000 is at the limit: every member is built, and the duplicate check is one pass.
    let c = "[" + (1...100).map { "\(Double($0) * 1e-4)" }.joined(separator: ", ") + "]"
    let config = try f.load(M.minimal(appending: "[sweep]\n\"train.lr\" = \(c)\n\"train.weight_decay\" = \(b)\n"))
    XCTAssertEqual(config.members.count, 10_000)
    XCTAssertEqual(config.members.last?.id, "m9999")
  }

  func testModelsEntryValuesAreValidated() throws {
    let f = try Fixture()
    f.assertFails(
      M.minimal(appending: "[[models]]\n\"train.lr\" = 0.1\n[[models]]\n\"model.heads\" = 0\n"), line: 16,
      ["model.heads must be in 1...1024 (got 0)", "in model m001 of [[models]] entry 2"])
    f.assertFails(M.minimal(appending: "[[models]]\nmodel = { heads = 3 }\n"), line: 14, ["must be divisible", "m000"])
  }

  /// `[selection]`: each bad value an error at its line.
  func testBadSelectionTables() throws {
    let f = try Fixture()
    f.assertFails(
      M.minimal(appending: "[selection]\nname = \"hyperband\"\n"), line: 14,
      ["selection \"hyperband\" is not registered", "sha"])
    f.assertFails(
      M.minimal(appending: "[selection]\nname = \"sha\"\nmetric = \"train_loss\"\n"), line: 15,
      ["selection.metric", "train_loss", "val_loss"])
    f.assertFails(
      M.minimal(appending: "[selection]\nname = \"sha\"\nmin_steps = 0\n"), line: 15, ["selection.min_steps", ">= 1"])
    f.assertFails(
      M.minimal(appending: "[selection]\nname = \"sha\"\nreduction_factor = 1\n"), line: 15,
      ["selection.reduction_factor", "2...1000"])
    f.assertFails(
      M.minimal(appending: "[selection]\nname = \"sha\"\nmin_steps = 10\n"), line: 15,
      ["selection.min_steps = 10 is not below any model's train.steps", "no rung"])
    f.assertFails(
      M.minimal(appending: "[selection]\nname = \"sha\"\nmin_steps = \"few\"\n"), line: 15,
      ["selection.min_steps", "expected an integer"])
    f.assertFails(
      M.minimal(replacing: 7, with: "validation_fraction = 0", appending: "[selection]\nname = \"asha\"\n"),
      line: 14, ["validation_fraction = 0", "no validation data"])
    // An option of the policy's own is the plugin's to judge (the runtime reports it at its line).
    XCTAssertNoThrow(try f.load(M.minimal(appending: "[selection]\nname = \"sha\"\ngrace = 3\n")))
  }
}
