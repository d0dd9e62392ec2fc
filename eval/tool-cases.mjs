// The tool-calling evaluation sets, each one catalogue of tools (so every case sees the same
// prompt prefix, as an agent does) and cases with the exact calls expected, or none:
// - CASES over TOOLS, eight everyday tools with no system prompt;
// - AGENT_CASES over the example server's tools with its system prompt (AGENT_SYSTEM_PROMPT),
//   which is what users of `npm start` meet.
//
// `expect` lists calls as { name, arguments } (arguments compared key by key: strings without
// regard to case or surrounding space, numbers by value; {} accepts any arguments); [] means
// the model should answer in text. `answerIncludes`: text (or a RegExp) the answer must hold, in
// prose: an answer that echoes JSON back does not count.
import { DEFAULT_SYSTEM_PROMPT } from '../server/agent.mjs'
import { createDefaultTools } from '../server/agentTools.mjs'

const fn = (name, description, properties, required = Object.keys(properties)) => ({
  type: 'function',
  function: { name, description, parameters: { type: 'object', properties, required } },
})

export const TOOLS = [
  fn('get_weather', 'Get the current weather in a city', {
    location: { type: 'string', description: 'City name in English, e.g. London' },
    unit: { type: 'string', enum: ['celsius', 'fahrenheit'] },
  }, ['location']),
  fn('get_time', 'Get the current local time in an IANA time zone', {
    timezone: { type: 'string', description: 'IANA time zone, e.g. Europe/Lisbon' },
  }),
  fn('convert_currency', 'Convert an amount of money between currencies', {
    amount: { type: 'number' },
    from: { type: 'string', enum: ['USD', 'EUR', 'GBP', 'BRL', 'JPY'] },
    to: { type: 'string', enum: ['USD', 'EUR', 'GBP', 'BRL', 'JPY'] },
  }),
  fn('search_flights', 'Search flights between two cities on a date', {
    origin: { type: 'string', description: 'Departure city' },
    destination: { type: 'string', description: 'Arrival city' },
    date: { type: 'string', description: 'YYYY-MM-DD' },
    passengers: { type: 'integer', minimum: 1 },
  }, ['origin', 'destination', 'date']),
  fn('create_event', 'Create a calendar event', {
    title: { type: 'string' },
    date: { type: 'string', description: 'YYYY-MM-DD' },
    attendees: { type: 'array', items: { type: 'string' }, description: 'Names of the people invited' },
  }, ['title', 'date']),
  fn('send_email', 'Send an email', {
    to: { type: 'string', description: 'Recipient email address' },
    subject: { type: 'string' },
    body: { type: 'string' },
  }),
  fn('set_reminder', 'Set a reminder after a number of minutes', {
    text: { type: 'string' },
    minutes: { type: 'integer', minimum: 1 },
  }),
  fn('add_to_cart', 'Add a product to the shopping cart', {
    product: {
      type: 'object',
      properties: { name: { type: 'string' }, size: { type: 'string', enum: ['S', 'M', 'L', 'XL'] } },
      required: ['name'],
    },
    quantity: { type: 'integer', minimum: 1 },
  }),
]

const call = (name, args) => ({ name, arguments: args })
const user = (content) => [{ role: 'user', content }]

/** An earlier assistant call and its tool result, for multi-turn cases. */
const turn = (question, name, args, result) => [
  { role: 'user', content: question },
  { role: 'assistant', content: null, tool_calls: [{ id: `call_${name}`, type: 'function', function: { name, arguments: JSON.stringify(args) } }] },
  { role: 'tool', tool_call_id: `call_${name}`, name, content: JSON.stringify(result) },
]

export const CASES = [
  // Single call, straightforward.
  { id: 'weather-lisbon', kind: 'single', messages: user("What's the weather in Lisbon in celsius?"), expect: [call('get_weather', { location: 'Lisbon', unit: 'celsius' })] },
  { id: 'weather-tokyo-f', kind: 'single', messages: user('How hot is it in Tokyo right now, in fahrenheit?'), expect: [call('get_weather', { location: 'Tokyo', unit: 'fahrenheit' })] },
  { id: 'time-tokyo', kind: 'single', messages: user('What time is it in the Asia/Tokyo time zone?'), expect: [call('get_time', { timezone: 'Asia/Tokyo' })] },
  { id: 'time-ny', kind: 'single', messages: user('Tell me the current time in America/New_York.'), expect: [call('get_time', { timezone: 'America/New_York' })] },
  { id: 'reminder', kind: 'single', messages: user('Remind me to call mom in 30 minutes.'), expect: [call('set_reminder', { text: 'call mom', minutes: 30 })] },
  { id: 'email', kind: 'single', messages: user('Send an email to bob@example.com with subject "Lunch" and body "See you at noon".'), expect: [call('send_email', { to: 'bob@example.com', subject: 'Lunch', body: 'See you at noon' })] },

  // Argument extraction: enums, numbers, nested objects, arrays.
  { id: 'currency-usd-eur', kind: 'arguments', messages: user('Convert 250 US dollars to euros.'), expect: [call('convert_currency', { amount: 250, from: 'USD', to: 'EUR' })] },
  { id: 'currency-gbp-jpy', kind: 'arguments', messages: user('How many Japanese yen is 99.5 British pounds?'), expect: [call('convert_currency', { amount: 99.5, from: 'GBP', to: 'JPY' })] },
  { id: 'currency-brl', kind: 'arguments', messages: user('Convert 1200 EUR into BRL please.'), expect: [call('convert_currency', { amount: 1200, from: 'EUR', to: 'BRL' })] },
  { id: 'flight-passengers', kind: 'arguments', messages: user('Find flights from Lisbon to Paris on 2025-07-14 for 3 passengers.'), expect: [call('search_flights', { origin: 'Lisbon', destination: 'Paris', date: '2025-07-14', passengers: 3 })] },
  { id: 'flight-basic', kind: 'arguments', messages: user('Search flights from Berlin to Madrid on 2025-12-01.'), expect: [call('search_flights', { origin: 'Berlin', destination: 'Madrid', date: '2025-12-01' })] },
  { id: 'event-attendees', kind: 'arguments', messages: user('Create an event called "Team sync" on 2025-03-10 with Ana and Bruno.'), expect: [call('create_event', { title: 'Team sync', date: '2025-03-10', attendees: ['Ana', 'Bruno'] })] },
  { id: 'cart-nested', kind: 'arguments', messages: user('Add 2 t-shirts in size L to my cart.'), expect: [call('add_to_cart', { product: { name: 't-shirt', size: 'L' }, quantity: 2 })] },
  { id: 'cart-nested-2', kind: 'arguments', messages: user('Put one hoodie, size M, in the cart.'), expect: [call('add_to_cart', { product: { name: 'hoodie', size: 'M' }, quantity: 1 })] },
  { id: 'reminder-hour', kind: 'arguments', messages: user('Set a reminder in 90 minutes to stretch.'), expect: [call('set_reminder', { text: 'stretch', minutes: 90 })] },
  { id: 'weather-unit-c', kind: 'arguments', messages: user('Weather in Oslo please, in celsius.'), expect: [call('get_weather', { location: 'Oslo', unit: 'celsius' })] },

  // Choosing among the eight tools.
  { id: 'choose-time-vs-weather', kind: 'choice', messages: user('I need the local time in Europe/Berlin.'), expect: [call('get_time', { timezone: 'Europe/Berlin' })] },
  { id: 'choose-currency', kind: 'choice', messages: user('What is 10 EUR in USD?'), expect: [call('convert_currency', { amount: 10, from: 'EUR', to: 'USD' })] },
  { id: 'choose-email', kind: 'choice', messages: user('Email alice@example.com, subject "Report", body "Attached is the report".'), expect: [call('send_email', { to: 'alice@example.com', subject: 'Report', body: 'Attached is the report' })] },
  { id: 'choose-flight', kind: 'choice', messages: user('Are there flights from Rome to London on 2025-05-20?'), expect: [call('search_flights', { origin: 'Rome', destination: 'London', date: '2025-05-20' })] },
  { id: 'choose-event', kind: 'choice', messages: user('Put "Dentist" on my calendar for 2025-04-02.'), expect: [call('create_event', { title: 'Dentist', date: '2025-04-02' })] },
  { id: 'choose-cart', kind: 'choice', messages: user('Add 3 mugs to my shopping cart.'), expect: [call('add_to_cart', { product: { name: 'mug' }, quantity: 3 })] },

  // No call needed.
  { id: 'none-capital', kind: 'no-call', messages: user('What is the capital of Italy?'), expect: [] },
  { id: 'none-code', kind: 'no-call', messages: user('Write a Python function that reverses a string.'), expect: [] },
  { id: 'none-greeting', kind: 'no-call', messages: user('Hi! Who are you?'), expect: [] },
  { id: 'none-math', kind: 'no-call', messages: user('What is 12 times 12?'), expect: [] },
  { id: 'none-explain', kind: 'no-call', messages: user('Explain what a hash map is in one sentence.'), expect: [] },

  // Several calls in one turn.
  { id: 'parallel-weather', kind: 'parallel', messages: user("What's the weather in Paris and in Rome, in celsius?"), expect: [call('get_weather', { location: 'Paris', unit: 'celsius' }), call('get_weather', { location: 'Rome', unit: 'celsius' })] },
  { id: 'parallel-mixed', kind: 'parallel', messages: user('What time is it in Europe/London, and convert 50 GBP to EUR.'), expect: [call('get_time', { timezone: 'Europe/London' }), call('convert_currency', { amount: 50, from: 'GBP', to: 'EUR' })] },
  { id: 'parallel-times', kind: 'parallel', messages: user('Give me the current time in Asia/Tokyo and in America/Chicago.'), expect: [call('get_time', { timezone: 'Asia/Tokyo' }), call('get_time', { timezone: 'America/Chicago' })] },

  // Multi-turn: after a tool result, answer (no call) or make the next call.
  { id: 'multi-answer-weather', kind: 'multi-turn', messages: turn("What's the weather in Madrid in celsius?", 'get_weather', { location: 'Madrid', unit: 'celsius' }, { temperature: 31, condition: 'sunny' }), expect: [], answerIncludes: '31' },
  { id: 'multi-answer-currency', kind: 'multi-turn', messages: turn('Convert 100 USD to EUR.', 'convert_currency', { amount: 100, from: 'USD', to: 'EUR' }, { result: 92.4, currency: 'EUR' }), expect: [], answerIncludes: '92.4' },
  { id: 'multi-next-call', kind: 'multi-turn', messages: [...turn("What's the weather in Lisbon in celsius?", 'get_weather', { location: 'Lisbon', unit: 'celsius' }, { temperature: 22, condition: 'cloudy' }), { role: 'assistant', content: 'It is 22°C and cloudy in Lisbon.' }, { role: 'user', content: 'And what time is it there? The zone is Europe/Lisbon.' }], expect: [call('get_time', { timezone: 'Europe/Lisbon' })] },
  { id: 'multi-next-currency', kind: 'multi-turn', messages: [...turn('What time is it in Asia/Tokyo?', 'get_time', { timezone: 'Asia/Tokyo' }, { time: '21:05' }), { role: 'assistant', content: 'It is 21:05 in Tokyo.' }, { role: 'user', content: 'Thanks. Now convert 5000 JPY to USD.' }], expect: [call('convert_currency', { amount: 5000, from: 'JPY', to: 'USD' })] },
  { id: 'multi-answer-time', kind: 'multi-turn', messages: turn('What time is it in Europe/Paris?', 'get_time', { timezone: 'Europe/Paris' }, { time: '14:30' }), expect: [], answerIncludes: '14:30' },

  // Portuguese prompts.
  { id: 'pt-weather', kind: 'portuguese', messages: user('Qual é o tempo em Lisboa em celsius?'), expect: [call('get_weather', { location: 'Lisbon', unit: 'celsius' })] },
  { id: 'pt-currency', kind: 'portuguese', messages: user('Converta 300 reais (BRL) para dólares americanos (USD).'), expect: [call('convert_currency', { amount: 300, from: 'BRL', to: 'USD' })] },
  { id: 'pt-reminder', kind: 'portuguese', messages: user('Me lembre de tomar água daqui a 15 minutos.'), expect: [call('set_reminder', { text: 'tomar água', minutes: 15 })] },
  { id: 'pt-time', kind: 'portuguese', messages: user('Que horas são no fuso America/Sao_Paulo?'), expect: [call('get_time', { timezone: 'America/Sao_Paulo' })] },
  { id: 'pt-flight', kind: 'portuguese', messages: user('Procure voos de Porto para Londres em 2025-08-01 para 2 passageiros.'), expect: [call('search_flights', { origin: 'Porto', destination: 'London', date: '2025-08-01', passengers: 2 })] },
  { id: 'pt-none', kind: 'portuguese', messages: user('Qual é a capital do Brasil?'), expect: [] },
  { id: 'pt-email', kind: 'portuguese', messages: user('Envie um email para joao@example.com com assunto "Reunião" e corpo "Amanhã às 10h".'), expect: [call('send_email', { to: 'joao@example.com', subject: 'Reunião', body: 'Amanhã às 10h' })] },
]

export const AGENT_SYSTEM_PROMPT = DEFAULT_SYSTEM_PROMPT
// Definitions only: the eval never runs a tool, so the sandbox folder is never read.
export const AGENT_TOOLS = createDefaultTools({ sandboxDir: '.' }).definitions

export const AGENT_CASES = [
  // What the chat page is asked most: plain questions and tasks, no tool needed.
  { id: 'agent-count', kind: 'no-call', messages: user('Count from 1 to 10.'), expect: [] },
  { id: 'agent-capital', kind: 'no-call', messages: user('What is the capital of France?'), expect: [] },
  { id: 'agent-hello', kind: 'no-call', messages: user('Hello! What can you do?'), expect: [] },
  { id: 'agent-haiku', kind: 'no-call', messages: user('Write a haiku about the sea.'), expect: [] },
  { id: 'agent-explain', kind: 'no-call', messages: user('Explain recursion in one sentence.'), expect: [] },
  { id: 'agent-code', kind: 'no-call', messages: user('Write a JavaScript function that checks if a number is even.'), expect: [] },

  // Each tool, asked for plainly.
  { id: 'agent-time-tokyo', kind: 'single', messages: user('What time is it in Asia/Tokyo?'), expect: [call('get_current_time', { timezone: 'Asia/Tokyo' })] },
  { id: 'agent-time-utc', kind: 'single', messages: user('What is the current date and time in UTC?'), expect: [call('get_current_time', { timezone: 'UTC' })] },
  { id: 'agent-calc', kind: 'single', messages: user('Use the calculator: what is 1234 * 5678?'), expect: [call('calculate', {})] },
  { id: 'agent-units-miles', kind: 'single', messages: user('Convert 5 miles to kilometers.'), expect: [call('convert_units', { value: 5, from: 'mi', to: 'km' })] },
  { id: 'agent-units-temp', kind: 'single', messages: user('Convert 30 degrees celsius to fahrenheit.'), expect: [call('convert_units', { value: 30, from: 'celsius', to: 'fahrenheit' })] },
  { id: 'agent-list', kind: 'single', messages: user('List the files in the sandbox.'), expect: [call('list_files', {})] },
  { id: 'agent-read', kind: 'single', messages: user('Read the file notes.md and tell me what it says.'), expect: [call('read_file', { path: 'notes.md' })] },

  // After a tool result: answer in prose.
  { id: 'agent-answer-time', kind: 'multi-turn', messages: turn('What time is it in Europe/Paris?', 'get_current_time', { timezone: 'Europe/Paris' }, { timezone: 'Europe/Paris', date: '2026-11-28', time: '14:30:05', weekday: 'Saturday' }), expect: [], answerIncludes: '14:30' },
  { id: 'agent-answer-calc', kind: 'multi-turn', messages: turn('What is 1234 * 5678?', 'calculate', { expression: '1234 * 5678' }, { expression: '1234 * 5678', result: 7006652 }), expect: [], answerIncludes: /7,?006,?652/ },
]
