import { page } from "../ui.js";
export function list() { return page("projects", { intro: "coming" }); }
export function detail() { return page("projects", { intro: "coming" }); }
