import Foundation
import XCTest

@testable import HydraConfig

final class JobConfigTests: XCTestCase {
  func testReferenceExample() throws {
    let f = try Fixture()
    let c = try f.load(Fixture.reference)
    XCTAssertEqual(c.file, f.dir + "/job.toml")
    XCTAssertEqual(c.source, Fixture.reference)
    XCTAssertEqual(c.job, JobSection(name: "fortunes-lr", output: f.dir + "/runs/fortunes-lr", seed: 7))
    XCTAssertEqual(
      c.cluster,
      ClusterSection(
        backend: "shm", devices: 2, deviceMemory: 64 << 20, hostMemory: 1 << 30, kernels: "cpu",
        threadsPerDevice: 1))
    XCTAssertEqual(
      c.data,
      DataSection(
        format: .text, path: f.dir + "/data/fortunes.txt", validationFraction: 0.05, labelColumn: -1,
        featureScale: 1.0, header: false))
    XCTAssertEqual(
      c.model,
      ModelSection(
        kind: .gpt, layers: 4, dModel: 128, heads: 4, context: 64, vocab: 256, hidden: [],
        classes: nil, inputs: nil, initPath: nil))
    XCTAssertEqual(
      c.train,
      TrainSection(
        steps: 300, batchSize: 16, optimizer: .adamw, lr: 1e-3, weightDecay: 0, momentum: 0.9,
        betas: [0.9, 0.999], eps: 1e-8, schedule: .cosine, warmupSteps: 20, shuffle: true,
        evalEvery: 100, evalBatches: 20, checkpointEvery: 100))
    XCTAssertEqual(c.partitioner, PluginSection(name: "balanced"))
    XCTAssertEqual(c.scheduler, PluginSection(name: "lrtf"))
    XCTAssertEqual(c.plugins.load, [])
    XCTAssertEqual(c.sweep.map(\.key), ["train.lr", "train.batch_size"])

    let expected: [(Double, Int)] = [(3e-3, 8), (3e-3, 16), (1e-3, 8), (1e-3, 16), (3e-4, 8), (3e-4, 16)]
    XCTAssertEqual(c.members.map(\.id), ["m000", "m001", "m002", "m003", "m004", "m005"])
    for (i, (m, (lr, batch))) in zip(c.members, expected).enumerated() {
      XCTAssertEqual(m.train.lr, lr)
      XCTAssertEqual(m.train.batchSize, batch)
      XCTAssertEqual(
        m.overrides,
        [
          Override(key: "train.lr", value: .double(lr)),
          Override(key: "train.batch_size", value: .int(batch)),
        ])
      XCTAssertEqual(m.model, c.model)
      var t = c.train
      t.lr = lr
      t.batchSize = batch
      XCTAssertEqual(m.train, t)
      XCTAssertEqual(m.seed, memberSeed(jobSeed: 7, index: i))
    }
    XCTAssertEqual(Set(c.members.map(\.seed)).count, 6)
  }

  func testMemberSeedIsFixed() {
    // SplitMix64's finalizer of 0 ^ 1 * golden: the first output of SplitMix64 seeded with 0.
    XCTAssertEqual(memberSeed(jobSeed: 0, index: 1), 0xE220_A839_7B1D_CDAF)
    XCTAssertEqual(memberSeed(jobSeed: 0, index: 0), 0)
    XCTAssertNotEqual(memberSeed(jobSeed: 7, index: 0), memberSeed(jobSeed: 8, index: 0))
  }

  func testDefaults() throws {
    let f = try Fixture()
    let c = try f.load(Fixture.minimal)
    XCTAssertEqual(c.job, JobSection(name: "t", output: f.dir + "/runs/t", seed: 0))
    XCTAssertEqual(
      c.cluster,
      ClusterSection(
        backend: "shm", devices: 1, deviceMemory: nil, hostMemory: nil, kernels: "cpu",
        threadsPerDevice: 1))
    XCTAssertEqual(
      c.data,
      DataSection(
        format: .text, path: f.dir + "/data.txt", validationFraction: 0.05, labelColumn: -1,
        featureScale: 1, header: false))
    XCTAssertEqual(
      c.model,
      ModelSection(
        kind: .gpt, layers: 4, dModel: 128, heads: 4, context: 64, vocab: 256, hidden: [],
        classes: nil, inputs: nil, initPath: nil))
    XCTAssertEqual(
      c.train,
      TrainSection(
        steps: 10, batchSize: 16, optimizer: .adamw, lr: 1e-3, weightDecay: 0, momentum: 0.9,
        betas: [0.9, 0.999], eps: 1e-8, schedule: .cosine, warmupSteps: 0, shuffle: true,
        evalEvery: 100, evalBatches: 20, checkpointEvery: 0))
    XCTAssertEqual(c.partitioner, PluginSection(name: "balanced"))
    XCTAssertEqual(c.scheduler, PluginSection(name: "lrtf"))
    XCTAssertEqual(c.plugins, PluginsSection(load: []))
    XCTAssertEqual(c.members.count, 1)
    XCTAssertEqual(c.members[0].id, "m000")
    XCTAssertEqual(c.members[0].overrides, [])
    XCTAssertEqual(c.members[0].model, c.model)
    XCTAssertEqual(c.members[0].train, c.train)
  }

  func testResolvedTOMLRoundTrips() throws {
    let f = try Fixture()
    try "w".write(toFile: f.dir + "/init.safetensors", atomically: true, encoding: .utf8)
    try "so".write(toFile: f.dir + "/libx.so", atomically: true, encoding: .utf8)
    for text in [Fixture.reference, Fixture.minimal, Fixture.mlpWithModels] {
      let c = try f.load(text)
      let other = try Fixture()
      let path = try other.write(c.resolvedTOML(), as: "resolved.toml")
      let again = try JobConfig.load(path: path, known: Fixture.known)
      XCTAssertEqual(again, c, c.resolvedTOML())
      XCTAssertEqual(again.members.map(\.overrides), c.members.map(\.overrides))
      XCTAssertEqual(
        again.resolvedTOML().split(separator: "\n").dropFirst(), c.resolvedTOML().split(separator: "\n").dropFirst())
    }
  }

  func testMPIClusterOptions() throws {
    let f = try Fixture()
    // Under mpi the ranks are the devices: `devices` counts as given only when written.
    let plain = try f.load(Fixture.minimal + "[cluster]\nbackend = \"mpi\"\n")
    XCTAssertFalse(plain.cluster.devicesGiven)
    XCTAssertEqual(plain.cluster.placement, .byModel)
    XCTAssertFalse(plain.resolvedTOML().contains("devices ="), plain.resolvedTOML())
    let given = try f.load(Fixture.minimal + "[cluster]\nbackend = \"mpi\"\ndevices = 3\nplacement = \"by-shard\"\n")
    XCTAssertTrue(given.cluster.devicesGiven)
    XCTAssertEqual(given.cluster.devices, 3)
    XCTAssertEqual(given.cluster.placement, .byShard)
    XCTAssertTrue(
      try f.load(Fixture.minimal, overrides: ["cluster.backend=mpi", "cluster.devices=2"]).cluster.devicesGiven)
    // Under shm it never matters.
    XCTAssertFalse(try f.load(Fixture.minimal + "[cluster]\ndevices = 2\n").cluster.devicesGiven)
    for config in [plain, given] {
      let other = try Fixture()
      let again = try JobConfig.load(path: other.write(config.resolvedTOML(), as: "r.toml"), known: Fixture.known)
      XCTAssertEqual(again.cluster, config.cluster)
    }
    f.assertFails(
      Fixture.minimal + "[cluster]\nbackend = \"mpi\"\nplacement = \"spread\"\n", line: 15,
      ["cluster.placement", "by-model", "by-shard"])
    // spill_folder: relative to the job file, round-trips, an empty one is refused.
    let spill = try f.load(Fixture.minimal + "[cluster]\nspill_folder = \"scratch/x\"\n")
    XCTAssertEqual(spill.cluster.spillFolder, f.dir + "/scratch/x")
    XCTAssertNil(plain.cluster.spillFolder)
    let other = try Fixture()
    let again = try JobConfig.load(path: other.write(spill.resolvedTOML(), as: "r.toml"), known: Fixture.known)
    XCTAssertEqual(again.cluster, spill.cluster)
    f.assertFails(Fixture.minimal + "[cluster]\nspill_folder = \"\"\n", line: 14, ["cluster.spill_folder"])
  }

  func testMLPWithModelsAndOptions() throws {
    let f = try Fixture()
    try "w".write(toFile: f.dir + "/init.safetensors", atomically: true, encoding: .utf8)
    try "so".write(toFile: f.dir + "/libx.so", atomically: true, encoding: .utf8)
    let c = try f.load(Fixture.mlpWithModels)
    XCTAssertEqual(c.model.kind, .mlp)
    XCTAssertEqual(c.model.hidden, [64, 32])
    XCTAssertEqual(c.model.classes, 10)
    XCTAssertEqual(c.model.initPath, f.dir + "/init.safetensors")
    XCTAssertEqual(c.cluster.deviceMemory, 1_500_000)
    XCTAssertEqual(c.cluster.hostMemory, 3 << 29)
    XCTAssertEqual(c.data.format, .csv)
    XCTAssertEqual(c.data.labelColumn, 0)
    XCTAssertEqual(c.data.featureScale, 0.0625)
    XCTAssertTrue(c.data.header)
    XCTAssertEqual(c.train.optimizer, .sgd)
    XCTAssertEqual(c.partitioner, PluginSection(name: "fixed", options: ["blocks_per_shard": .int(2)]))
    XCTAssertEqual(
      c.scheduler,
      PluginSection(name: "random", options: ["seed": .int(3), "weights": .array([.double(0.5), .int(1)])]))
    XCTAssertEqual(c.plugins.load, [f.dir + "/libx.so"])
    // Sweep members first (2), then the three [[models]] entries in file order.
    XCTAssertEqual(c.members.map(\.id), ["m000", "m001", "m002", "m003", "m004"])
    XCTAssertEqual(c.members.map(\.train.momentum), [0.5, 0.9, 0.9, 0.9, 0.9])
    XCTAssertEqual(
      c.members[2].overrides,
      [
        Override(key: "model.hidden", value: .array([.int(128)])),
        Override(key: "train.lr", value: .double(0.05)),
      ])
    XCTAssertEqual(c.members[2].model.hidden, [128])
    XCTAssertEqual(c.members[2].train.lr, 0.05)
    XCTAssertEqual(c.members[3].overrides, [Override(key: "train.lr", value: .double(0.2))])
    XCTAssertEqual(c.members[4].model.classes, 12)
    XCTAssertEqual(c.members[4].model.hidden, [16])
    XCTAssertEqual(c.explicitModels.count, 3)
  }

  func testOnlyModelsGivesOnlyThoseMembers() throws {
    let f = try Fixture()
    let c = try f.load(Fixture.minimal(appending: "[[models]]\n\"train.lr\" = 0.01\n[[models]]\n\"train.lr\" = 0.02\n"))
    XCTAssertEqual(c.members.map(\.id), ["m000", "m001"])
    XCTAssertEqual(c.members.map(\.train.lr), [0.01, 0.02])
  }

  func testSetOverrides() throws {
    let f = try Fixture()
    try "y".write(toFile: f.dir + "/other.txt", atomically: true, encoding: .utf8)
    let c = try f.load(
      Fixture.reference,
      overrides: [
        "train.lr=0.01", "cluster.devices=3", "data.path=other.txt", "scheduler.name=fifo",
        "cluster.device_memory = 2GB", "sweep.train.batch_size=[4]", "sweep.model.layers=[2, 3]",
        "partitioner.blocks_per_shard=2",
      ])
    XCTAssertEqual(c.train.lr, 0.01)
    XCTAssertEqual(c.cluster.devices, 3)
    XCTAssertEqual(c.cluster.deviceMemory, 2_000_000_000)
    XCTAssertEqual(c.data.path, f.dir + "/other.txt")
    XCTAssertEqual(c.scheduler.name, "fifo")
    XCTAssertEqual(c.partitioner.options, ["blocks_per_shard": .int(2)])
    XCTAssertEqual(c.sweep.map(\.key), ["train.lr", "train.batch_size", "model.layers"])
    XCTAssertEqual(c.members.count, 6)
    XCTAssertEqual(
      c.members[1].overrides.map(\.description), ["train.lr = 0.003", "train.batch_size = 4", "model.layers = 3"])
  }

  func testBadSetOverrides() throws {
    let f = try Fixture()
    f.assertFails(Fixture.minimal, line: nil, ["--set train.lr", "expected table.key=value"], overrides: ["train.lr"])
    f.assertFails(Fixture.minimal, line: nil, ["--set lr=1", "expected table.key=value"], overrides: ["lr=1"])
    f.assertFails(
      Fixture.minimal, line: nil, ["--set train.rate=1", "unknown key \"rate\"", "valid keys: steps"],
      overrides: ["train.rate=1"])
    f.assertFails(Fixture.minimal, line: nil, ["--set trian.lr=1", "unknown table [trian]"], overrides: ["trian.lr=1"])
    f.assertFails(Fixture.minimal, line: nil, ["--set models.x=1", "unknown table"], overrides: ["models.x=1"])
    f.assertFails(Fixture.minimal, line: nil, ["--set train.lr=", "missing value"], overrides: ["train.lr="])
    f.assertFails(
      Fixture.minimal, line: nil, ["train.lr must be > 0", "from --set train.lr=-1"], overrides: ["train.lr=-1"])
    f.assertFails(
      Fixture.minimal, line: nil, ["train.steps: expected an integer", "from --set train.steps=many"],
      overrides: ["train.steps=many"])
  }

  func testBareDottedAndInlineFormsInModelsAndSweep() throws {
    let f = try Fixture()
    let c = try f.load(
      Fixture.minimal(
        appending: """
          [sweep]
          train.lr = [0.1, 0.2]

          [[models]]
          model = { d_model = 64, heads = 2 }

          [[models]]
          train.steps = 5
          """))
    XCTAssertEqual(c.sweep, [SweepAxis(key: "train.lr", values: [.double(0.1), .double(0.2)])])
    XCTAssertEqual(c.members.count, 4)
    XCTAssertEqual(
      c.members[2].overrides,
      [
        Override(key: "model.d_model", value: .int(64)),
        Override(key: "model.heads", value: .int(2)),
      ])
    XCTAssertEqual(c.members[2].model.dModel, 64)
    XCTAssertEqual(c.members[3].train.steps, 5)
  }
}

extension Override: CustomStringConvertible {
  public var description: String { "\(key) = \(value)" }
}

extension Fixture {
  /// An mlp job on csv data with a sweep, three [[models]] entries, plugin options and a plugin.
  static let mlpWithModels = """
    [job]
    name = "mlp.v2"
    output = "/tmp/elsewhere/../out"

    [cluster]
    devices = 2
    device_memory = "1.5 MB"
    host_memory = "1.5GiB"
    kernels = "reference"

    [data]
    format = "csv"
    path = "./data/../data.txt"
    label_column = 0
    feature_scale = 0.0625
    header = true

    [model]
    kind = "mlp"
    hidden = [64, 32]
    classes = 10
    init = "init.safetensors"

    [train]
    steps = 50
    optimizer = "sgd"
    lr = 0.1
    schedule = "constant"

    [sweep]
    "train.momentum" = [0.5, 0.9]

    [[models]]
    "model.hidden" = [128]
    "train.lr" = 0.05

    [[models]]
    "train.lr" = 0.2

    [[models]]
    "model.classes" = 12
    "model.hidden" = [16]

    [partitioner]
    name = "fixed"
    blocks_per_shard = 2

    [scheduler]
    name = "random"
    seed = 3
    weights = [0.5, 1]

    [plugins]
    load = ["libx.so"]

    """
}
