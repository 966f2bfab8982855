import Foundation
import TOMLKit

/// A decoded, validated `job.toml`: every default filled in, every path absolute, the sweep expanded.
///
/// Members: the `[sweep]` is the cartesian product of its lists, in the order the keys are written,
/// last key fastest (`m000`, `m001`, ...); then one member per `[[models]]` entry, in file order. With
/// no sweep and no `[[models]]` the job has one member, the base `[model]` + `[train]`; with only
/// `[[models]]` the members are exactly those entries.
///
/// A `[[models]]` entry holds `model.*` / `train.*` keys that override the base tables, written as
/// quoted dotted keys (`"model.d_model" = 256`, `"train.lr" = 3e-4`); bare dotted keys
/// (`model.d_model = 256`) and inline tables (`model = { d_model = 256 }`) mean the same in TOML and
/// are accepted too. `[sweep]` keys are written the same way.
///
/// Equality compares the settings and ignores `file` and `source`: re-loading `resolvedTOML()` from
/// another folder gives an equal `JobConfig`.
public struct JobConfig: Sendable, Equatable {
  /// Absolute path of the job file.
  public var file: String
  /// The job file's text as read.
  public var source: String
  public var job: JobSection
  public var cluster: ClusterSection
  public var data: DataSection
  /// The base model: members start from it.
  public var model: ModelSection
  /// The base training settings: members start from them.
  public var train: TrainSection
  public var partitioner: PluginSection
  public var scheduler: PluginSection
  public var selection: SelectionSection
  public var plugins: PluginsSection
  /// The `[sweep]` axes in the order written (`model.init` values made absolute).
  public var sweep: [SweepAxis]
  /// The `[[models]]` entries, each as its overrides in the order written.
  public var explicitModels: [[Override]]
  /// The expanded job: sweep members, then `[[models]]` members.
  public var members: [ModelMember]
  /// The most models a job may have (README, "Limits"): counted before any is expanded.
  public static let maxMembers = 10_000

  public static func == (a: JobConfig, b: JobConfig) -> Bool {
    a.job == b.job && a.cluster == b.cluster && a.data == b.data && a.model == b.model && a.train == b.train
      && a.partitioner == b.partitioner && a.scheduler == b.scheduler && a.selection == b.selection
      && a.plugins == b.plugins
      && a.sweep == b.sweep && a.explicitModels == b.explicitModels && a.members == b.members
  }

  /// Reads, decodes and validates a job file. `overrides` are `--set` strings (`"train.lr=0.01"`,
  /// `"cluster.devices=2"`, `"sweep.train.lr=[1e-3, 3e-4]"`), applied before validation; the value is
  /// read as a TOML value, and as a plain string if it is not one (`data.path=other.txt`).
  /// The line of `table.key` in the job file (for messages about values the runtime checks),
  /// falling back to the table's header.
  public func line(table: String, key: String) -> Int? {
    SourceMap(source: source).line(table: table, key: key)
  }

  public static func load(path: String, known: KnownPlugins, overrides: [String] = []) throws -> JobConfig {
    let file = resolvePath(path, relativeTo: FileManager.default.currentDirectoryPath)
    guard let data = FileManager.default.contents(atPath: file), let source = String(data: data, encoding: .utf8)
    else {
      throw ConfigError(file: file, line: nil, message: "cannot read the job file (missing, unreadable or not UTF-8)")
    }
    return try decode(source: source, file: file, known: known, overrides: overrides)
  }

  static func decode(source: String, file: String, known: KnownPlugins, overrides: [String]) throws -> JobConfig {
    var doc = try Document(source: source, file: file)
    for o in overrides { try doc.apply(override: o) }
    let dir = (file as NSString).deletingLastPathComponent
    let job = try decodeJob(doc.section("job"), jobDir: dir)
    let cluster = try decodeCluster(doc.section("cluster"), known: known, jobDir: dir)
    let data = try decodeData(doc.section("data"), jobDir: dir)
    let modelSection = doc.section("model"), trainSection = doc.section("train")
    let model = try decodeModel(modelSection, jobDir: dir)
    let train = try decodeTrain(trainSection)
    let partitioner = try decodePlugin(
      doc.section("partitioner"), default: known.defaultPartitioner, registered: known.partitioners)
    let scheduler = try decodePlugin(
      doc.section("scheduler"), default: known.defaultScheduler, registered: known.schedulers)
    let selectionSection = doc.section("selection")
    let selection = try decodeSelection(selectionSection, registered: known.selections)
    let plugins = try decodePlugins(doc.section("plugins"), jobDir: dir)
    let sweep = try doc.sweepAxes(jobDir: dir)
    let entries = try doc.modelEntries(jobDir: dir)

    // The member count first, with checked arithmetic: a few lines of [sweep] can describe more
    // models than any machine holds, and expanding them would run away before any other check.
    var count = entries.count
    var overflow = false
    if !sweep.isEmpty {
      var product = 1
      for axis in sweep {
        let (p, o) = product.multipliedReportingOverflow(by: axis.axis.values.count)
        product = p
        overflow = overflow || o
      }
      let (c, o) = product.addingReportingOverflow(entries.count)
      count = c
      overflow = overflow || o
    }
    if overflow || count > JobConfig.maxMembers {
      let sizes = sweep.map { "\($0.axis.values.count)" }.joined(separator: " x ")
      let what = overflow ? "more than \(Int.max)" : "\(count)"
      throw ConfigError(
        file: file, line: sweep.compactMap(\.line).first ?? entries.first?.lines.compactMap { $0 }.first,
        message:
          "the job has \(what) models ([sweep] \(sizes.isEmpty ? "none" : sizes) plus \(entries.count) [[models]] entries): a job may have at most \(JobConfig.maxMembers); sample fewer points or split the sweep into several jobs"
      )
    }

    // Each member: the base sections with its overrides put in, decoded and validated again.
    var specs: [(overrides: [Override], lines: [Int?], origin: String)] = []
    if !sweep.isEmpty {
      var counters = [Int](repeating: 0, count: sweep.count)
      while true {
        let o = sweep.indices.map { Override(key: sweep[$0].axis.key, value: sweep[$0].axis.values[counters[$0]]) }
        specs.append((o, sweep.map(\.line), "of [sweep]"))
        var i = sweep.count - 1
        while i >= 0 {
          counters[i] += 1
          if counters[i] < sweep[i].axis.values.count { break }
          counters[i] = 0
          i -= 1
        }
        if i < 0 { break }
      }
    }
    for (n, e) in entries.enumerated() {
      specs.append((e.overrides, e.lines, "of [[models]] entry \(n + 1)"))
    }
    if specs.isEmpty { specs.append(([], [], "")) }

    var members: [ModelMember] = []
    // Each member's settings to its id: duplicates found in one pass, not by comparing all pairs.
    var seen: [MemberSettings: String] = [:]
    for (index, spec) in specs.enumerated() {
      let id = memberID(index)
      var m = modelSection, t = trainSection
      for (o, line) in zip(spec.overrides, spec.lines) {
        let field = Field(value: Raw(o.value), line: line, origin: "in model \(id) \(spec.origin)")
        let key = String(o.key.drop(while: { $0 != "." }).dropFirst())
        if o.key.hasPrefix("model.") { m.fields[key] = field } else { t.fields[key] = field }
      }
      let member = ModelMember(
        id: id, overrides: spec.overrides, seed: memberSeed(jobSeed: job.seed, index: index),
        model: spec.overrides.isEmpty ? model : try decodeModel(m, jobDir: dir),
        train: spec.overrides.isEmpty ? train : try decodeTrain(t))
      if let same = seen[MemberSettings(model: member.model, train: member.train)] {
        throw ConfigError(
          file: file, line: spec.lines.compactMap { $0 }.first,
          message: "duplicate model: \(same) and \(id) have the same model and train settings")
      }
      seen[MemberSettings(model: member.model, train: member.train)] = id
      members.append(member)
    }
    if selection.name != "none" {
      // Rungs compare validation results: there must be some, and a rung below some model's end.
      if data.validationFraction == 0 {
        throw selectionSection.error(
          "name",
          "selection.name = \(tomlString(selection.name)) compares models by \(selection.metric.rawValue), but data.validation_fraction = 0 leaves no validation data"
        )
      }
      let longest = members.map(\.train.steps).max() ?? 0
      if selection.rungs.steps(below: longest).isEmpty {
        throw selectionSection.error(
          "min_steps",
          "selection.min_steps = \(selection.minSteps) is not below any model's train.steps (at most \(longest)): there is no rung at which to compare the models"
        )
      }
    }
    return JobConfig(
      file: file, source: source, job: job, cluster: cluster, data: data, model: model, train: train,
      partitioner: partitioner, scheduler: scheduler, selection: selection, plugins: plugins, sweep: sweep.map(\.axis),
      explicitModels: entries.map(\.overrides), members: members)
  }

  /// The `[plugins] load` paths alone (absolute), for a runtime that must load plugins before it knows
  /// every registered name. Checks only what it reads.
  public static func pluginLibraries(path: String, overrides: [String] = []) throws -> [String] {
    let file = resolvePath(path, relativeTo: FileManager.default.currentDirectoryPath)
    guard let data = FileManager.default.contents(atPath: file), let source = String(data: data, encoding: .utf8)
    else {
      throw ConfigError(file: file, line: nil, message: "cannot read the job file (missing, unreadable or not UTF-8)")
    }
    var doc = try Document(source: source, file: file)
    for o in overrides { try doc.apply(override: o) }
    return try decodePlugins(doc.section("plugins"), jobDir: (file as NSString).deletingLastPathComponent).load
  }
}

/// `m000`, `m001`, ..., `m999`, `m1000`, ...
func memberID(_ index: Int) -> String {
  let n = String(index)
  return "m" + String(repeating: "0", count: max(0, 3 - n.count)) + n
}

/// What makes two members the same model: the duplicate check's key.
private struct MemberSettings: Hashable {
  var model: ModelSection
  var train: TrainSection
}
