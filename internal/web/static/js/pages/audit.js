import { page } from "../ui.js";
export function list() { return page("audit", { intro: "coming" }); }
