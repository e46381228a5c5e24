/// <reference lib="dom" />
/// <reference lib="dom.iterable" />
// A real headless Chromium for the dashboard tests: the browser that ships inside the npm package
// @sparticuz/chromium (unpacked to /tmp on first use), driven by puppeteer-core. `npm ci` installs
// it like any package; nothing is downloaded at run time. A browser that cannot start fails the
// test with the reason, it is never skipped.
import chromium from "@sparticuz/chromium"
import puppeteer, { type Browser, type Page } from "puppeteer-core"

export const launchBrowser = async (): Promise<Browser> => {
  const executablePath = await chromium.executablePath()
  try {
    return await puppeteer.launch({ executablePath, args: chromium.args, headless: true, defaultViewport: { width: 1400, height: 900 } })
  } catch (e) {
    throw new Error(`headless Chromium from @sparticuz/chromium (${executablePath}) did not start: ${e instanceof Error ? e.message : String(e)}`)
  }
}

/** Collects every console error and uncaught exception of a page into `errors`, for a test to require none. */
export const consoleErrors = (page: Page, errors: Array<string>): void => {
  page.on("console", (m) => {
    if (m.type() === "error") errors.push(`${page.url()}: ${m.text()}`)
  })
  page.on("pageerror", (e) => errors.push(`${page.url()}: ${e instanceof Error ? e.message : String(e)}`))
}

/**
 * Saves a screenshot and returns the share of its pixels that are not the page's white background,
 * measured by decoding the PNG in the page itself (a canvas): a blank or failed render is ~0.
 */
export const screenshotInk = async (page: Page, path: string): Promise<number> => {
  const png = await page.screenshot({ path, type: "png", fullPage: false, encoding: "base64" })
  return page.evaluate(async (data: string) => {
    const img = new Image()
    img.src = `data:image/png;base64,${data}`
    await img.decode()
    const canvas = document.createElement("canvas")
    canvas.width = img.width
    canvas.height = img.height
    const g = canvas.getContext("2d")!
    g.drawImage(img, 0, 0)
    const px = g.getImageData(0, 0, img.width, img.height).data
    let ink = 0
    for (let i = 0; i < px.length; i += 4) if (px[i] < 240 || px[i + 1] < 240 || px[i + 2] < 240) ink++
    return ink / (px.length / 4)
  }, png)
}
