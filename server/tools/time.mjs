// Tool: the current date and time in any IANA time zone.

/** The wall-clock reading of `date` in `timeZone`, from Intl (throws RangeError on an unknown zone). */
function wallClock(date, timeZone) {
  const parts = Object.fromEntries(
    new Intl.DateTimeFormat('en-US', {
      timeZone,
      hourCycle: 'h23',
      year: 'numeric',
      month: '2-digit',
      day: '2-digit',
      hour: '2-digit',
      minute: '2-digit',
      second: '2-digit',
      weekday: 'long',
      timeZoneName: 'longOffset',
    })
      .formatToParts(date)
      .map((p) => [p.type, p.value]),
  )
  const offset = parts.timeZoneName === 'GMT' ? '+00:00' : parts.timeZoneName.replace('GMT', '')
  const day = `${parts.year}-${parts.month}-${parts.day}`
  const time = `${parts.hour}:${parts.minute}:${parts.second}`
  return { timezone: timeZone, date: day, time, weekday: parts.weekday, utc_offset: offset, iso: `${day}T${time}${offset}` }
}

export function timeTools() {
  return [
    {
      name: 'get_current_time',
      description: 'Get the current date and time in a time zone',
      parameters: {
        type: 'object',
        properties: {
          timezone: { type: 'string', description: 'IANA time zone, e.g. Europe/Lisbon, America/New_York, Asia/Tokyo or UTC' },
        },
        required: ['timezone'],
      },
      run({ timezone }) {
        try {
          return wallClock(new Date(), timezone)
        } catch (err) {
          if (err instanceof RangeError) throw new Error(`unknown time zone "${timezone}"; use an IANA name such as Europe/Paris`)
          throw err
        }
      },
    },
  ]
}
