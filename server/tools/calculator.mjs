// Tool: a calculator. Expressions are parsed by a small recursive-descent parser (never eval):
// numbers, + - * / % ^ (or **), parentheses, the constants pi, e and tau, and Math functions.

const MAX_LENGTH = 500
const MAX_DEPTH = 64

const CONSTANTS = { pi: Math.PI, e: Math.E, tau: 2 * Math.PI }
const FUNCTIONS = {
  sqrt: [1, Math.sqrt], cbrt: [1, Math.cbrt], abs: [1, Math.abs], exp: [1, Math.exp],
  ln: [1, Math.log], log10: [1, Math.log10], log2: [1, Math.log2],
  log: [[1, 2], (x, base) => (base === undefined ? Math.log10(x) : Math.log(x) / Math.log(base))],
  sin: [1, Math.sin], cos: [1, Math.cos], tan: [1, Math.tan],
  asin: [1, Math.asin], acos: [1, Math.acos], atan: [1, Math.atan], atan2: [2, Math.atan2],
  floor: [1, Math.floor], ceil: [1, Math.ceil], trunc: [1, Math.trunc],
  round: [[1, 2], (x, digits = 0) => Math.round(x * 10 ** digits) / 10 ** digits],
  min: [[1, Infinity], Math.min], max: [[1, Infinity], Math.max], pow: [2, Math.pow], hypot: [[1, Infinity], Math.hypot],
}

const TOKEN = /\s*(?:(\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)|([A-Za-z_][A-Za-z0-9_]*)|(\*\*|[-+*/%^(),×÷]))/y

function tokenize(text) {
  const tokens = []
  TOKEN.lastIndex = 0
  while (TOKEN.lastIndex < text.length) {
    const at = TOKEN.lastIndex
    const m = TOKEN.exec(text)
    if (!m) {
      if (/^\s*$/.test(text.slice(at))) break
      throw new Error(`unexpected "${text.slice(at).trim()[0]}" at position ${at + 1}`)
    }
    if (m[1] !== undefined) tokens.push({ kind: 'number', value: Number(m[1]) })
    else if (m[2] !== undefined) tokens.push({ kind: 'name', value: m[2].toLowerCase() })
    else tokens.push({ kind: 'op', value: { '×': '*', '÷': '/', '**': '^' }[m[3]] ?? m[3] })
  }
  return tokens
}

/** Evaluates an arithmetic expression; throws an Error saying what is wrong with it. */
function evaluate(expression) {
  if (expression.length > MAX_LENGTH) throw new Error(`the expression is longer than ${MAX_LENGTH} characters`)
  const tokens = tokenize(expression)
  let pos = 0
  let depth = 0
  const peek = () => tokens[pos]
  const isOp = (value) => peek()?.kind === 'op' && peek().value === value
  const expect = (value) => {
    if (!isOp(value)) throw new Error(`expected "${value}"${peek() ? ` before "${peek().value}"` : ' at the end'}`)
    pos++
  }
  const nested = (parse) => {
    if (++depth > MAX_DEPTH) throw new Error('the expression is nested too deeply')
    try {
      return parse()
    } finally {
      depth--
    }
  }

  // sum := product (("+" | "-") product)*
  const sum = () => {
    let value = product()
    while (isOp('+') || isOp('-')) value = tokens[pos++].value === '+' ? value + product() : value - product()
    return value
  }
  // product := unary (("*" | "/" | "%") unary)*
  const product = () => {
    let value = unary()
    while (isOp('*') || isOp('/') || isOp('%')) {
      const op = tokens[pos++].value
      const right = unary()
      value = op === '*' ? value * right : op === '/' ? value / right : value % right
    }
    return value
  }
  // unary := ("-" | "+") unary | power      so -2^2 = -(2^2), as in mathematics
  const unary = () => nested(() => {
    if (isOp('-') || isOp('+')) return tokens[pos++].value === '-' ? -unary() : unary()
    return power()
  })
  // power := primary ("^" unary)?           right-associative: 2^3^2 = 2^9
  const power = () => {
    const base = primary()
    if (!isOp('^')) return base
    pos++
    return base ** unary()
  }
  // primary := number | constant | function "(" sum ("," sum)* ")" | "(" sum ")"
  const primary = () => {
    const token = tokens[pos++]
    if (!token) throw new Error('the expression ends too early')
    if (token.kind === 'number') return token.value
    if (token.kind === 'op' && token.value === '(') {
      const value = nested(sum)
      expect(')')
      return value
    }
    if (token.kind === 'name') {
      if (Object.hasOwn(CONSTANTS, token.value)) return CONSTANTS[token.value]
      const fn = Object.hasOwn(FUNCTIONS, token.value) ? FUNCTIONS[token.value] : undefined
      if (!fn) throw new Error(`unknown name "${token.value}"; functions: ${Object.keys(FUNCTIONS).join(', ')}; constants: pi, e, tau`)
      expect('(')
      const args = [nested(sum)]
      while (isOp(',')) {
        pos++
        args.push(nested(sum))
      }
      expect(')')
      const [arity, apply] = fn
      const [least, most] = Array.isArray(arity) ? arity : [arity, arity]
      if (args.length < least || args.length > most) throw new Error(`${token.value}() takes ${least === most ? least : `${least} or more`} argument${most === 1 ? '' : 's'}, not ${args.length}`)
      return apply(...args)
    }
    throw new Error(`unexpected "${token.value}"`)
  }

  if (tokens.length === 0) throw new Error('the expression is empty')
  const value = sum()
  if (pos < tokens.length) throw new Error(`unexpected "${tokens[pos].value}" after a complete expression`)
  if (!Number.isFinite(value)) throw new Error(`the result is not a finite number (${value}); check for division by zero or overflow`)
  // 12 significant digits hide binary rounding (0.1 + 0.2 = 0.3) without losing real precision.
  return Number(value.toPrecision(12))
}

export function calculatorTools() {
  return [
    {
      name: 'calculate',
      description: 'Evaluate an arithmetic expression exactly, e.g. "(12.5 * 4) / 3", "2^10" or "sqrt(2)"',
      parameters: {
        type: 'object',
        properties: { expression: { type: 'string', description: 'Numbers, + - * / % ^, parentheses, pi, e, sqrt(), log(), sin() ...' } },
        required: ['expression'],
      },
      run: ({ expression }) => ({ expression, result: evaluate(expression) }),
    },
  ]
}
