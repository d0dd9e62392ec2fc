// Tool: unit conversion. Each unit is a factor to its dimension's base unit; temperature, the one
// affine scale, converts through kelvin.

const LINEAR = {
  length: { mm: 0.001, cm: 0.01, m: 1, km: 1000, in: 0.0254, ft: 0.3048, yd: 0.9144, mi: 1609.344, nmi: 1852 },
  mass: { mg: 1e-6, g: 0.001, kg: 1, t: 1000, oz: 0.028349523125, lb: 0.45359237, st: 6.35029318 },
  volume: {
    ml: 0.001, l: 1, m3: 1000, tsp: 0.00492892159375, tbsp: 0.01478676478125, fl_oz: 0.0295735295625,
    cup: 0.2365882365, pt: 0.473176473, qt: 0.946352946, gal: 3.785411784,
  },
  area: { cm2: 1e-4, m2: 1, km2: 1e6, ha: 1e4, ft2: 0.09290304, acre: 4046.8564224, mi2: 2589988.110336 },
  speed: { 'm/s': 1, 'km/h': 1 / 3.6, mph: 0.44704, knot: 1852 / 3600, 'ft/s': 0.3048 },
  time: { ms: 0.001, s: 1, min: 60, h: 3600, day: 86400, week: 604800, year: 31557600 },
  data: { bit: 0.125, B: 1, KB: 1e3, MB: 1e6, GB: 1e9, TB: 1e12, KiB: 1024, MiB: 1024 ** 2, GiB: 1024 ** 3, TiB: 1024 ** 4 },
  energy: { J: 1, kJ: 1000, cal: 4.184, kcal: 4184, Wh: 3600, kWh: 3.6e6 },
  pressure: { Pa: 1, kPa: 1000, bar: 1e5, psi: 6894.757293168, atm: 101325 },
}
const TEMPERATURE = {
  celsius: { toKelvin: (v) => v + 273.15, fromKelvin: (k) => k - 273.15 },
  fahrenheit: { toKelvin: (v) => ((v - 32) * 5) / 9 + 273.15, fromKelvin: (k) => ((k - 273.15) * 9) / 5 + 32 },
  kelvin: { toKelvin: (v) => v, fromKelvin: (k) => k },
}

const DIMENSION = new Map([
  ...Object.entries(LINEAR).flatMap(([dimension, units]) => Object.keys(units).map((u) => [u, dimension])),
  ...Object.keys(TEMPERATURE).map((u) => [u, 'temperature']),
])
const UNITS = [...DIMENSION.keys()]

/** `value` in unit `from`, expressed in unit `to` (12 significant digits). */
function convert(value, from, to) {
  const dimension = DIMENSION.get(from)
  if (dimension === undefined) throw new Error(`unknown unit "${from}"`)
  if (DIMENSION.get(to) !== dimension) throw new Error(`cannot convert ${dimension} (${from}) to ${DIMENSION.get(to) ?? 'an unknown unit'} (${to})`)
  let result
  if (dimension === 'temperature') {
    const kelvin = TEMPERATURE[from].toKelvin(value)
    if (kelvin < 0) throw new Error(`${value} ${from} is below absolute zero`)
    result = TEMPERATURE[to].fromKelvin(kelvin)
  } else {
    result = (value * LINEAR[dimension][from]) / LINEAR[dimension][to]
  }
  return Number(result.toPrecision(12))
}

export function unitTools() {
  return [
    {
      name: 'convert_units',
      // The units are listed once, by the enums: the prompt carries every tool's schema, and each
      // token of it is prefill time on every cold request.
      description: `Convert a quantity between units of the same kind (${[...Object.keys(LINEAR), 'temperature'].join(', ')})`,
      parameters: {
        type: 'object',
        properties: {
          value: { type: 'number' },
          from: { type: 'string', enum: UNITS },
          to: { type: 'string', enum: UNITS },
        },
        required: ['value', 'from', 'to'],
      },
      run: ({ value, from, to }) => ({ value, from, to, result: convert(value, from, to) }),
    },
  ]
}
