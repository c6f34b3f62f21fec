import { page } from "../ui.js";
export function list() { return page("providers", { intro: "coming" }); }
export function detail() { return page("providers", { intro: "coming" }); }
