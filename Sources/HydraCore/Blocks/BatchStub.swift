// Stand-in until the data module lands; removed at merge.
public struct Batch: Sendable {
  public var rows: Int
  public var tokens: [Int32]
  public var features: [Float]
  public var targets: [Int32]
  public init(rows: Int, tokens: [Int32], features: [Float], targets: [Int32]) {
    self.rows = rows; self.tokens = tokens; self.features = features; self.targets = targets
  }
}
