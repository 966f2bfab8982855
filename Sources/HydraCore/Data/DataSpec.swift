/// What to load and how: the `[data]` table of a job, with the model's context and vocabulary.
public struct DataSpec: Sendable {
  public var format: DataFormat
  /// The file path as the user wrote it, already resolved to an absolute path by the caller.
  /// Error messages name the file by this path.
  public var path: String
  /// The fraction of the data held out for validation, in `0 ..< 1`.
  public var validationFraction: Double
  /// text/tokens: the window length T (inputs); each window reads T+1 tokens.
  public var context: Int
  /// text: must be >= 256 (bytes); tokens: every token must be < vocab.
  public var vocab: Int
  /// csv: index of the label column; negative counts from the end (-1 = last).
  public var labelColumn: Int
  /// csv: the features are multiplied by this (digits: 0.0625 = 1/16).
  public var featureScale: Float
  /// csv: skip the first line.
  public var header: Bool
  /// csv: labels must be integers in `0 ..< classes`; 0 = any integer >= 0 (not bounded above).
  public var classes: Int
  /// csv: nil keeps the rows in file order before the split (validation = the last rows); a seed
  /// permutes the rows first, with the same Fisher-Yates draw as the example order (seeded by
  /// `derivedSeed(splitSeed, 0)`), so that validation is a seeded random sample of the rows.
  public var splitSeed: UInt64?

  public init(
    format: DataFormat, path: String, validationFraction: Double = 0.05, context: Int = 64,
    vocab: Int = 256, labelColumn: Int = -1, featureScale: Float = 1, header: Bool = false,
    classes: Int = 0, splitSeed: UInt64? = nil
  ) {
    self.splitSeed = splitSeed
    self.format = format
    self.path = path
    self.validationFraction = validationFraction
    self.context = context
    self.vocab = vocab
    self.labelColumn = labelColumn
    self.featureScale = featureScale
    self.header = header
    self.classes = classes
  }
}

/// A batch of examples, flat and row-major.
public struct Batch: Sendable, Equatable {
  /// The batch size B (number of examples).
  public var rows: Int
  /// text/tokens: B*T input tokens (row-major); empty for csv.
  public var tokens: [Int32]
  /// csv: B*F features, already scaled; empty otherwise.
  public var features: [Float]
  /// text/tokens: B*T next tokens (the inputs shifted by one); csv: B labels.
  public var targets: [Int32]

  public init(rows: Int, tokens: [Int32] = [], features: [Float] = [], targets: [Int32]) {
    self.rows = rows
    self.tokens = tokens
    self.features = features
    self.targets = targets
  }
}
