// Requests and tools shared by the tests and the Windows smoke test (scripts/windows/smoke.cjs,
// which runs under Wine and so imports nothing that loads the Linux addon).

/** The get_weather tool of the function-calling tests. */
export const WEATHER_TOOL = {
  type: 'function',
  function: {
    name: 'get_weather',
    description: 'Get the current weather in a city',
    parameters: {
      type: 'object',
      properties: {
        location: { type: 'string', description: 'City name in English, e.g. London' },
        unit: { type: 'string', enum: ['celsius', 'fahrenheit'] },
      },
      required: ['location', 'unit'],
    },
  },
}

export const LISBON = [{ role: 'user', content: "What's the weather in Lisbon in celsius?" }]
