public enum Direction: String, Sendable { case forward, backward }

/// What a scheduler hands a device: one shard's forward or backward of one model's step.
public struct ShardTask: Sendable, Equatable, CustomStringConvertible {
  public var model: Int
  public var shard: Int
  public var direction: Direction
  public var step: Int
  public init(model: Int, shard: Int, direction: Direction, step: Int) {
    self.model = model
    self.shard = shard
    self.direction = direction
    self.step = step
  }
  public var description: String { "m\(model) s\(shard) \(direction == .forward ? "fwd" : "bwd") @\(step)" }
}
