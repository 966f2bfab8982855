import HydraCore
import XCTest

/// Parameters are drawn in pieces on every core: the values must be those of one sequential stream
/// of the parameter's generator, computed here with a plain loop.
final class InitializationTests: XCTestCase {
  func testAdvancedGeneratorIsTheStreamAfterThatManyDraws() {
    var a = SplitMix64(seed: 99)
    for _ in 0..<1_234 { _ = a.next() }
    var b = SplitMix64(seed: 99).advanced(by: 1_234)
    for _ in 0..<10 { XCTAssertEqual(a.next(), b.next()) }
  }

  func testALargeGPTParameterIsTheSequentialStream() throws {
    // wte: 1,100 x 128 = 140,800 values, three pieces.
    let spec = ModelSpec.gpt(GPTShape(layers: 1, channels: 128, heads: 2, context: 8, vocab: 1_100))
    let block = try spec.makeBlock(0, memory: nil)
    spec.initialize(block, seed: 42)
    let wte = try XCTUnwrap(block.parameters.first { $0.name == "wte.weight" })
    XCTAssertGreaterThan(wte.count, 2 * 65_536)
    var rng = SplitMix64(seed: derivedSeed(42, stableHash(wte.name)))
    let expected = (0..<wte.count).map { _ in Float(rng.nextNormal() * 0.02) }
    XCTAssertEqual(wte.value.array, expected)
  }

  func testALargeMLPWeightIsTheSequentialStream() throws {
    // 512 x 300 = 153,600 values, three pieces; U(-1/sqrt(300), 1/sqrt(300)).
    let spec = ModelSpec.mlp(inputs: 300, hidden: [512], classes: 10)
    let block = try spec.makeBlock(0, memory: nil)
    spec.initialize(block, seed: 7)
    let weight = block.parameters[0]
    XCTAssertEqual(weight.count, 153_600)
    var rng = SplitMix64(seed: derivedSeed(7, stableHash(weight.name)))
    let bound = 1 / Double(300).squareRoot()
    let expected = (0..<weight.count).map { _ in Float((rng.nextUnit() * 2 - 1) * bound) }
    XCTAssertEqual(weight.value.array, expected)
  }
}
